"""Time and peak memory of vlp's chunked retrieval metrics at growing sizes.

    python benchmarks/eval_retrieval_memory.py --sizes 10000,30000,100000 --dim 512

Random unit embeddings, one caption per image; each size runs in a fresh process so its
peak resident memory (ru_maxrss) is its own. Appends a table to
benchmarks/results/eval_retrieval_memory.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

from report import append_result


def one(n: int, dim: int) -> dict:
    import torch
    import torch.nn.functional as F

    from vlp.eval.retrieval import retrieval_metrics

    g = torch.Generator().manual_seed(0)
    image, text = torch.empty(n, dim), torch.empty(n, dim)
    for i in range(0, n, 4096):  # in pieces, so that making the data does not set the memory peak
        block = F.normalize(torch.randn(min(4096, n - i), dim, generator=g), dim=-1)
        image[i:i + 4096] = block
        text[i:i + 4096] = F.normalize(block + 0.5 * torch.randn(block.shape, generator=g) / dim**0.5, dim=-1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    m = retrieval_metrics(image, text, torch.arange(n))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "dim": dim, "seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": base,
            "embeddings_mb": 2 * n * dim * 4 / 2**20, "R@1": m["image_to_text_R@1"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dim)))
        return
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--dim", str(args.dim)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = [
        f"\n## {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"`python benchmarks/eval_retrieval_memory.py --sizes {args.sizes} --dim {args.dim}`\n",
        "| items (images = texts) | dim | seconds | peak RSS MB | RSS before scoring MB (incl. embeddings) | embeddings MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']} | {r['dim']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['rss_before_mb']:.0f} | {r['embeddings_mb']:.0f} |")
    append_result("eval_retrieval_memory", "# Retrieval metrics: time and peak memory\n\nChunked scoring: a score "
                  "block holds at most 2^24 elements (64 MB fp32) whatever the size.\n", "\n".join(lines))


if __name__ == "__main__":
    main()

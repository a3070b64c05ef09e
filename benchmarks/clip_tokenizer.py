"""vlp's built-in CLIP tokenizer against open_clip's on the same strings, one core.

    pip install -e '.[dev]'
    python benchmarks/clip_tokenizer.py [--repeats 5]

The strings are tests/data/test_clip_tokenizer.py's corpus (2,105 web-like captions: unicode,
emoji, CJK, HTML entities, over-long texts), tokenised to 77 ids in batches of 256, after one
warm-up pass each (open_clip caches the BPE of the words it saw: the warm pass is its steady
state). Reports strings/s (best of the repeats) and checks the ids are identical. Appends to
benchmarks/results/clip_tokenizer.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import append_to  # noqa: E402


def rate(fn, texts: list[str], repeats: int) -> float:
    for i in range(0, len(texts), 256):
        fn(texts[i:i + 256])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(texts), 256):
            fn(texts[i:i + 256])
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def main() -> None:
    import open_clip
    import torch

    from tests.data.test_clip_tokenizer import corpus
    from vlp.data.clip_tokenizer import ClipTokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    texts = corpus()
    ours = ClipTokenizer(77)
    theirs = open_clip.get_tokenizer("ViT-B-32")
    same = torch.equal(ours(texts), theirs(texts))
    vlp_rate, oc_rate = rate(ours, texts, args.repeats), rate(theirs, texts, args.repeats)
    lines = [
        f"`python benchmarks/clip_tokenizer.py --repeats {args.repeats}` ({len(texts)} strings, 77 ids, batches of "
        f"256, one core, open_clip {open_clip.__version__})",
        "",
        "| tokenizer | strings/s |",
        "|---|---|",
        f"| vlp ClipTokenizer | {vlp_rate:.0f} |",
        f"| open_clip SimpleTokenizer | {oc_rate:.0f} |",
        "",
        f"Ratio vlp / open_clip: **{vlp_rate / oc_rate:.2f}**; ids identical: {same}.",
    ]
    print("\n".join(lines))
    import datetime

    day = datetime.date.today().isoformat()
    append_to(Path(__file__).parent / "results" / "clip_tokenizer.md", "# vlp's CLIP tokenizer vs open_clip's\n",
              "\n".join(["", f"## {day}", "", *lines]))


if __name__ == "__main__":
    main()

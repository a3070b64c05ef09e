"""Caption generation speed of vlp's CoCa (with and without its key/value cache) against
open_clip's ``CoCa.generate`` on the same model, and whether both give the same captions.

    pip install -e '.[bench]'
    python benchmarks/coca_generation.py [--ckpt runs/coca_tiny/version_0/checkpoints/last.ckpt]
        [--batch-sizes 1,32] [--max-length 15] [--repeats 5] [--threads N] [--device cpu|cuda]
        [extra recipe overrides, e.g. --model.towers.image.init_args.pool_queries 16]

Model: the coca_tiny recipe built through vlp's CLI (no training; random init with
``--seed``), or a trained vlp checkpoint with ``--ckpt`` (then the captions mean something).
open_clip: an ``open_clip.coca_model.CoCa`` with the same shapes holding the same weights
(benchmarks/open_clip_coca.py: the weight mapping and the three adjustments it needs for exact
equality - the LayerNorm after vlp's attentional poolers, which open_clip's ``'parallel'``
pooling lacks, timm's LayerNorm eps 1e-6, open_clip's corrected class-token mask - and the
re-enabling of open_clip 3.3.0's ``generate`` under transformers >= 5). Same vocabulary
(vlp's tokenizer, 8192 ids) and the same start / end / pad ids.

Images: the first ``--images`` images of ``--shards`` (the built-in emoji test shard),
decoded and transformed as vlp's eval does (resize + center crop to the recipe's size).

Checks, before timing:
1. logits: vlp's and open_clip's next-token logits, teacher-forced on the images' own
   captions (max |diff| at the real positions; padding positions differ by design, see
   open_clip_coca.py), and the image and text embeddings;
2. captions: greedy decoding of every image by vlp (cache), vlp (no cache) and open_clip's
   ``generate`` (``generation_type='top_k', top_k=1``), the same ``max_length`` free tokens;
   the count of identical id sequences.

Timing: greedy decoding of a fixed number of tokens, fp32: vlp with ``min_length =
max_length - 1`` (the end id banned until the last step), open_clip with ``seq_len =
max_length + 1, min_seq_len = max_length`` (its last token is its forced end id), so every
row takes exactly ``max_length`` decoder steps in all three; tokens/s = batch x max_length /
wall seconds of one whole ``generate`` call (image encoding included), median of
``--repeats`` runs after ``--warmup`` untimed rounds, the three taking turns round after
round. Also given: each library's image encoding timed alone (the same rounds) and the
decoding rate without it (batch x max_length / (generate - image encoding)). Appends a table
to benchmarks/results/coca_generation.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from open_clip_coca import (
    build_open_clip_coca,
    compare_forward,
    open_clip_greedy,
    same_rows,
)
from report import append_result  # noqa: E402


def build_vlp(args, extra: list[str]):
    """(module in eval mode, EvalData) from ``--ckpt`` or the recipe."""
    if args.ckpt:
        from vlp.inference import load

        loaded = load(args.ckpt, args.device)
        module, data = loaded.module, loaded.data
        return module.eval(), data
    from vlp.cli import run_cli

    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads only the arguments given here
    try:
        cli = run_cli(["--recipe", args.recipe, "--trainer.logger", "false", "--trainer.callbacks", "[]",
                       "--trainer.strategy", "auto", "--trainer.devices", "1", "--seed_everything", str(args.seed),
                       *extra], run=False)
    finally:
        sys.argv = argv
    return cli.model.to(args.device).eval(), cli.datamodule.eval_data(0)


def load_images(spec: str, count: int, transform) -> tuple[torch.Tensor, list[str]]:
    """The first ``count`` images of the shards ``spec`` (eval transform) and their captions."""
    from vlp.data.decode import decode_image, image_member
    from vlp.data.shards import expand_shards
    from vlp.data.tar_reader import tar_samples

    images, texts = [], []
    for url in expand_shards(spec):
        for sample in tar_samples(url):
            images.append(transform(decode_image(sample[image_member(sample)])))
            texts.append(sample.get("txt", b"").decode() if isinstance(sample.get("txt"), bytes) else "")
            if len(images) == count:
                return torch.stack(images), texts
    return torch.stack(images), texts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{platform.machine()} CPU{(' ' + name) if name else ''}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="coca_tiny")
    ap.add_argument("--ckpt", help="a vlp checkpoint of a coca recipe (default: the recipe, random init)")
    ap.add_argument("--shards", default="builtin:emoji/google/test-*.tar")
    ap.add_argument("--images", type=int, default=385, help="images for the caption check (385: the whole shard)")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--max-length", type=int, default=None,
                    help="tokens per caption after the start token (default: context_length - 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method and batch size (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first (the first calls of each shape "
                    "are slow on CPU)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to the results file")
    args, extra = ap.parse_known_args()
    if args.ckpt and extra:
        ap.error(f"recipe overrides {extra} do not apply to --ckpt")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    import open_clip

    from vlp.generation import Captioner

    module, data = build_vlp(args, extra)
    captioner = Captioner(module)
    spec = captioner.spec
    length = args.max_length or captioner.context_length - 1
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    oc = build_open_clip_coca(module, args.device)
    params = sum(p.numel() for p in module.parameters())
    oc_params = sum(p.numel() for p in oc.parameters())
    print(f"vlp {params / 1e6:.2f} M parameters, open_clip {oc_params / 1e6:.2f} M; max_length {length}; "
          f"threads {torch.get_num_threads()}; device {args.device}")

    images, texts = load_images(args.shards, max(args.images, *batch_sizes), data.transform())
    images = images.to(args.device)
    n_check = min(args.images, len(images))

    # 1. the same function: teacher-forced logits on the images' captions, embeddings
    with torch.no_grad():
        diffs = compare_forward(module, oc, images[:16], data.tokenizer(texts[:16]).to(args.device))
    print(f"logits max |vlp - open_clip| {diffs['logits']:.2e} (logits up to {diffs['logits_scale']:.2f}); "
          f"image embedding {diffs['image_embedding']:.2e}, text embedding {diffs['text_embedding']:.2e}")

    # 2. the same captions: free greedy decoding of every image
    same_oc = same_cache = 0
    shown = []
    for start in range(0, n_check, 32):
        x = images[start : min(start + 32, n_check)]
        ours = captioner.generate(x, "greedy", max_length=length).ids
        slow = captioner.generate(x, "greedy", max_length=length, use_cache=False).ids
        theirs = open_clip_greedy(oc, x, spec, length)
        same_oc += int(same_rows(ours, theirs, spec.pad_id).sum())
        same_cache += int(same_rows(ours, slow, spec.pad_id).sum())
        if not shown:
            shown = list(zip(texts[start : start + 3], data.tokenizer.decode(ours[:3]),
                             data.tokenizer.decode(theirs[:3])))
    print(f"greedy captions identical: vlp cache vs open_clip {same_oc}/{n_check}, vlp cache vs no cache "
          f"{same_cache}/{n_check}")
    for truth, ours, theirs in shown:
        print(f"  {truth!r}: vlp {ours!r} | open_clip {theirs!r}")

    # 3. speed: exactly `length` decoder steps per row in all three
    methods = {
        "vlp, cache": lambda x: captioner.generate(x, "greedy", max_length=length, min_length=length - 1).ids,
        "vlp, no cache": lambda x: captioner.generate(x, "greedy", max_length=length, min_length=length - 1,
                                                      use_cache=False).ids,
        "open_clip generate": lambda x: open_clip_greedy(oc, x, spec, length, exact_length=True),
    }
    encoders = {  # the image encoding inside each generate call, timed alone
        "vlp, cache": lambda x: module.run_tower("image", x, tokens=True),
        "open_clip generate": lambda x: oc._encode_image(x),
    }
    encoders["vlp, no cache"] = encoders["vlp, cache"]
    rows, ratios, agree = [], {}, {}
    for b in batch_sizes:
        x = images[:b]
        times: dict[str, list[float]] = {m: [] for m in methods}
        enc_times: dict[str, list[float]] = {"vlp, cache": [], "open_clip generate": []}
        outs = {}
        names = list(methods)
        for round_ in range(args.warmup + args.repeats):
            for name in names[round_ % 3:] + names[: round_ % 3]:  # take turns
                sync(args.device)
                t0 = time.perf_counter()
                outs[name] = methods[name](x)
                sync(args.device)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
            for name, found in enc_times.items():
                with torch.no_grad():
                    sync(args.device)
                    t0 = time.perf_counter()
                    encoders[name](x)
                    sync(args.device)
                if round_ >= args.warmup:
                    found.append(time.perf_counter() - t0)
        for name, ids in outs.items():  # every row ran `length` steps
            assert ids.shape == (b, length + 1) and bool((ids[:, 1:] != spec.pad_id).all()), (name, ids.shape)
        # the first length - 1 generated tokens (open_clip forces its last one to the end id)
        agree[b] = int((outs["vlp, cache"][:, :length] == outs["open_clip generate"][:, :length]).all(1).sum())
        med = {m: statistics.median(v) for m, v in times.items()}
        enc = {m: statistics.median(enc_times["open_clip generate" if m.startswith("open_clip") else "vlp, cache"])
               for m in methods}
        tps = {m: b * length / med[m] for m in med}
        # decoding alone; n/a where the separately timed encoding is not clearly below the whole (noise)
        dec = {m: b * length / (med[m] - enc[m]) if med[m] - enc[m] > 0.05 * med[m] else None for m in med}
        ratios[b] = tps["vlp, cache"] / tps["open_clip generate"]
        for m in methods:
            ref = dec["open_clip generate"]
            dec_cells = (f"{dec[m]:.0f}", f"{dec[m] / ref:.2f}x" if ref else "n/a") if dec[m] else ("n/a", "n/a")
            rows.append(f"| {b} | {m} | {b * length} | {1000 * med[m]:.1f} | {tps[m]:.0f} | "
                        f"{tps[m] / tps['open_clip generate']:.2f}x | {1000 * enc[m]:.1f} | {dec_cells[0]} | "
                        f"{dec_cells[1]} |")
            print(rows[-1])
    wall = time.perf_counter() - started

    cmd = "python benchmarks/coca_generation.py " + " ".join(sys.argv[1:])
    model = f"checkpoint {args.ckpt}" if args.ckpt else f"recipe {args.recipe}, random init (seed {args.seed})"
    lines = [
        f"\n## {time.strftime('%Y-%m-%d')}, {machine(args.device)}, torch {torch.__version__}, open_clip "
        f"{open_clip.__version__}, threads {torch.get_num_threads()}",
        "",
        f"`{cmd}` ({wall:.0f} s) - {model}, {params / 1e6:.2f} M parameters, fp32, greedy, {length} tokens per "
        f"caption, median of {args.repeats} runs",
        "",
        "| batch | method | tokens per run | ms per run | tokens/s | vs open_clip | image encoding ms | "
        "decoding tokens/s (without it) | vs open_clip |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Speed-up vlp (cache) / open_clip generate: "
        + ", ".join(f"batch {b}: **{r:.2f}x**" for b, r in ratios.items()) + ".",
        f"Same function: next-token logits max |diff| {diffs['logits']:.1e} (teacher-forced, real positions), "
        f"image / text embeddings {diffs['image_embedding']:.1e} / {diffs['text_embedding']:.1e}. "
        f"Identical greedy captions (free length, {args.shards}): vlp vs open_clip **{same_oc}/{n_check}**, "
        f"vlp cache vs no cache {same_cache}/{n_check}; in the timed runs the first {length - 1} tokens agree in "
        + ", ".join(f"{agree[b]}/{b}" for b in batch_sizes) + " rows.",
    ]
    print("\n".join(lines))
    if not args.no_append:
        append_result("coca_generation",
                      "# CoCa caption generation: vlp (with / without its KV cache) vs open_clip's generate\n",
                      "\n".join(lines))


if __name__ == "__main__":
    main()

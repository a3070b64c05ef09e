"""Train-step time of several recipes' models side by side (same batch of images and captions,
alternating round by round so that machine drift hits all alike).

    python benchmarks/step_time.py --recipes clip_tiny,coca_tiny [--steps 20] [--warmup 3]
        [--batch-size 64] [extra recipe overrides applied to every recipe ...]

Each recipe's model is built through the real CLI (no training run) with AdamW; a step is the
recipe's own training step (towers, objectives, backward, optimiser). Reports the median step
time, samples/s, parameters and the ratio to the first recipe; appends a table to
benchmarks/results/step_time.md. Text is each recipe's own tokenizer's ids of the same
captions (a CLIPPO recipe renders them).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

from report import append_result
from timing import alternating_medians, section_head, train_step_seconds


def build(recipe: str, extra: list[str], n: int, device: str):
    from vlp.cli import run_cli

    cli = run_cli(["--recipe", recipe, "--trainer.logger", "false", "--trainer.strategy", "auto",
                   "--trainer.devices", "1", *extra], run=False)
    model, data = cli.model.to(device).train(), cli.datamodule
    model.log = lambda *a, **k: None  # no trainer here
    size = data.image_size
    g = torch.Generator().manual_seed(0)
    captions = [f"emoji number {i}" for i in range(n)]
    batch = {"image": torch.randn(n, 3, size, size, generator=g)}
    batch["text"] = data.text_renderer(captions) if getattr(data, "text_renderer", None) else data.tokenizer(captions)
    batch = {k: v.to(device) for k, v in batch.items() if k in model.batch_fields()}
    missing = model.batch_fields() - set(batch)
    if missing:
        raise SystemExit(f"{recipe} needs batch fields {sorted(missing)} this benchmark does not make")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, batch, opt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="clip_tiny,coca_tiny")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per recipe")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, extra = ap.parse_known_args()
    recipes = args.recipes.split(",")
    built = {r: build(r, extra, args.batch_size, args.device) for r in recipes}

    medians = alternating_medians(recipes, lambda r: train_step_seconds(*built[r], args.device),
                                  args.warmup, args.steps)
    base = medians[recipes[0]]
    rows = []
    for r in recipes:
        med = medians[r]
        params = sum(p.numel() for p in built[r][0].parameters())
        rows.append(f"| {r} | {params / 1e6:.2f} M | {1000 * med:.1f} | {args.batch_size / med:.1f} | "
                    f"{med / base:.2f}x |")
        print(rows[-1], flush=True)
    cmd = "python benchmarks/step_time.py " + " ".join(sys.argv[1:])
    header = section_head(args.device, f"{os.cpu_count()} CPU cores ({platform.machine()})", cmd,
                          f"batch {args.batch_size}, median of {args.steps} steps, recipes alternating",
                          ["recipe", "parameters", "step ms", "samples/s", f"step time vs {recipes[0]}"])
    append_result("step_time", "# Train-step time of recipes side by side\n", "\n".join(header + rows))


if __name__ == "__main__":
    main()

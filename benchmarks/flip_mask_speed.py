"""Train-step time of one recipe's model at several FLIP mask ratios (same model, same batch).

    python benchmarks/flip_mask_speed.py [--recipe flip_tiny] [--ratios 0,0.5,0.75] [--steps 20]
        [--batch-size 64] [extra recipe overrides ...]

Builds the recipe's model through the real CLI (no training run), then times full optimiser
steps (forward, loss, backward, AdamW) on one fixed batch of random images and real captions,
the ratios taking turns round after round so that machine drift hits all alike; reports the
median step time per ratio and its ratio to mask 0, and appends a table to
benchmarks/results/flip_mask_speed.md.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from report import append_result
from timing import alternating_medians, section_head, train_step_seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="flip_tiny")
    ap.add_argument("--ratios", default="0,0.5,0.75")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per ratio")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, extra = ap.parse_known_args()

    from vlp.cli import run_cli

    cli = run_cli(["--recipe", args.recipe, "--trainer.logger", "false", "--trainer.strategy", "auto",
                   "--trainer.devices", "1", *extra], run=False)
    model, data = cli.model.to(args.device).train(), cli.datamodule
    tower = model.towers.image
    size = data.image_size
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(args.batch_size, 3, size, size, generator=g).to(args.device),
             "text": data.tokenizer([f"emoji number {i}" for i in range(args.batch_size)]).to(args.device)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.log = lambda *a, **k: None  # no trainer here

    def step(r: float) -> float:
        tower.mask_ratio = r
        return train_step_seconds(model, batch, opt, args.device)

    ratios = [float(r) for r in args.ratios.split(",")]
    medians = alternating_medians(ratios, step, args.warmup, args.steps)
    base = medians[ratios[0]]
    tokens = (size // tower.trunk.patch_embed.patch_size[0]) ** 2
    rows = []
    for r in ratios:
        med = medians[r]
        kept = max(1, int(tokens * (1 - r))) if r else tokens
        rows.append(f"| {r:g} | {kept} / {tokens} | {1000 * med:.1f} | {base / med:.2f}x |")
        print(rows[-1])
    cmd = "python benchmarks/flip_mask_speed.py " + " ".join(sys.argv[1:])
    header = section_head(args.device, platform.machine(), cmd,
                          f"recipe {args.recipe}, batch {args.batch_size}, {size} px, median of {args.steps} steps",
                          ["mask ratio", "patches kept", "step ms", "speed-up vs first"])
    append_result("flip_mask_speed", "# FLIP: train-step time against mask ratio\n", "\n".join(header + rows))


if __name__ == "__main__":
    main()

"""The training data stream alone against what the model consumes, on the same cores.

    python benchmarks/data_throughput.py [--workers 1,2,4] [--recipes clip_tiny,flip_tiny]
        [--batches 40] [--steps 15] [extra recipe overrides ...]

Stream: the recipe's own training loader (`vlp fit`'s: decode, augment, tokenise, batch in
DataLoader workers; the main process only receives the batches, as Lightning's loop does),
``--batches`` batches after 5 warm-up batches, for each worker count; samples/s. The loader is
re-created for every measurement (its workers start inside the timing window's warm-up).
Model: the recipe's training step (towers, objectives, backward, AdamW) on one fixed batch
from the loader, median of ``--steps``; the samples/s it consumes. The issue's goal: the stream
alone at 2 workers delivers at least 3x what flip_tiny consumes. Appends a table to
benchmarks/results/data_throughput.md. Run it alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from report import append_result, section_lines
from timing import train_step_seconds


def stream_rate(recipe: str, workers: int, batches: int, extra: list[str]) -> float:
    from vlp.cli import run_cli

    cli = run_cli(["--recipe", recipe, "--trainer.logger", "false", "--data.num_workers", str(workers), *extra],
                  run=False)
    data = cli.datamodule
    loader = data.train_dataloader()
    it = iter(loader)
    for _ in range(5):  # workers start, first shards open
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:  # a new epoch
            it = iter(loader)
            batch = next(it)
        n += batch["image"].shape[0]
    rate = n / (time.perf_counter() - start)
    del it
    return rate


def model_rate(recipe: str, steps: int, extra: list[str]) -> float:
    from vlp.cli import run_cli

    cli = run_cli(["--recipe", recipe, "--trainer.logger", "false", "--data.num_workers", "0", *extra], run=False)
    model, data = cli.model.train(), cli.datamodule
    model.log = lambda *a, **k: None
    batch = data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times = [train_step_seconds(model, batch, opt, "cpu") for _ in range(steps + 3)][3:]  # 3 warm-up steps
    return batch["image"].shape[0] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--recipes", default="clip_tiny,flip_tiny")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--steps", type=int, default=15)
    args, extra = ap.parse_known_args()
    recipes = args.recipes.split(",")
    consume = {r: model_rate(r, args.steps, extra) for r in recipes}
    for r, v in consume.items():
        print(f"{r} consumes {v:.1f} samples/s", flush=True)
    supply = {}
    for w in [int(x) for x in args.workers.split(",")]:
        supply[w] = stream_rate(recipes[0], w, args.batches, extra)
        print(f"stream ({recipes[0]}'s data settings), {w} workers: {supply[w]:.1f} samples/s", flush=True)
    command = "python benchmarks/data_throughput.py " + " ".join(sys.argv[1:])
    lines = section_lines(f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
                          f"threads {torch.get_num_threads()}", command,
                          ["workers", "stream samples/s", *(f"x {r}'s consumption" for r in recipes)])
    for w, v in supply.items():
        lines.append(f"| {w} | {v:.1f} | " + " | ".join(f"{v / consume[r]:.2f}" for r in recipes) + " |")
    lines += ["", "Consumption (training step alone, one fixed batch): "
              + ", ".join(f"{r} {v:.1f} samples/s" for r, v in consume.items())]
    append_result("data_throughput", "# The data stream alone against the model's consumption\n", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

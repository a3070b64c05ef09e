"""Train several recipes for the same wall-clock budget on the same data and compare them.

    python benchmarks/compare_recipes.py --recipes clip_tiny,flip_tiny,slip_tiny,siglip_tiny \
        --budget-minutes 4 [extra vlp fit overrides ...]

For each recipe: time a few real training steps in-process (data loading included), choose
the number of epochs whose schedule fits 80% of the budget (the rest is for start-up and the
final evaluation), then run `vlp fit` in a subprocess with that schedule and
``trainer.max_time`` as a hard stop. Reports wall time, steps, samples/s, parameters, peak
memory of the training process, and the recipe's end-of-run emoji evaluation; appends the
table to benchmarks/results/compare_recipes.md. Recipes run one after another, alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = [
    ("emoji_google_test_retrieval", "image_to_text_R@1", "google i->t R@1"),
    ("emoji_google_test_retrieval", "image_to_text_R@5", "google i->t R@5"),
    ("emoji_twitter_test_retrieval", "image_to_text_R@1", "twitter i->t R@1"),
    ("emoji_twitter_test_retrieval", "image_to_text_R@5", "twitter i->t R@5"),
    ("emoji_google_test_category", "top1", "google category top1"),
]
# The training process's own peak RSS: VmHWM belongs to the process image (ru_maxrss would carry
# the parent's high-water mark across fork + exec).
WRAPPER = ("import atexit, sys; from vlp.cli import main; "
           "hwm = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')); "
           "atexit.register(lambda: print('peak_rss_mb', hwm() / 1024, file=sys.stderr)); "
           "sys.argv = ['vlp'] + sys.argv[1:]; main()")


def calibrate(recipe: str, extra: list[str], steps: int) -> dict:
    """Seconds per training step (median of ``steps`` after 2 warm-up steps), batches per epoch,
    parameter count; in-process, real data."""
    import statistics

    import torch

    from vlp.cli import run_cli

    cli = run_cli(["--recipe", recipe, "--trainer.logger", "false", *extra], run=False)
    model, data = cli.model.train(), cli.datamodule
    model.log = lambda *a, **k: None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    loader = data.train_dataloader()
    times, it = [], iter(loader)
    for i in range(steps + 2):
        start = time.perf_counter()
        batch = data.on_before_batch_transfer(next(it), 0)
        loss = model.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    del it
    return {"step_s": statistics.median(times), "batches_per_epoch": len(loader), "batch_size": data.batch_size,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def run(recipe: str, extra: list[str], budget_s: float, cal: dict) -> dict:
    epochs = max(1, int(0.8 * budget_s / (cal["step_s"] * cal["batches_per_epoch"])))
    hms = time.strftime("%H:%M:%S", time.gmtime(budget_s))
    work = tempfile.mkdtemp(prefix=f"vlp-compare-{recipe}-")
    cmd = [sys.executable, "-c", WRAPPER, "fit", "--recipe", recipe, "--trainer.max_epochs", str(epochs),
           "--trainer.max_time", f"00:{hms}", "--trainer.enable_progress_bar", "false",
           "--trainer.logger.init_args.save_dir", work, *extra]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{recipe} failed:\n{out.stderr[-3000:]}")
    logs = next(line for line in out.stdout.splitlines() if line.startswith("logs: ")).split(": ", 1)[1]
    evaluation = json.loads((Path(work) / logs / "eval.json").read_text())
    peak = float(next(line for line in out.stderr.splitlines() if line.startswith("peak_rss_mb")).split()[1])
    steps = evaluation["step"]
    results = {r["task"]: r["metrics"] for r in evaluation["results"]}
    return {"recipe": recipe, "epochs": epochs, "steps": steps, "wall_s": wall,
            "samples_per_s": steps * cal["batch_size"] / wall, "peak_rss_mb": peak, "results": results, **cal}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="clip_tiny,flip_tiny,slip_tiny,siglip_tiny")
    ap.add_argument("--budget-minutes", type=float, default=4.0)
    ap.add_argument("--calibrate-steps", type=int, default=10)
    args, extra = ap.parse_known_args()
    budget = 60 * args.budget_minutes
    rows = []
    for recipe in args.recipes.split(","):
        cal = calibrate(recipe, extra, args.calibrate_steps)
        row = run(recipe, extra, budget, cal)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "results"}), flush=True)
    head = ["recipe", "epochs", "steps", "wall s", "samples/s (whole run)", "train step s", "params (trainable)",
            "peak RSS MB", *[m[2] for m in METRICS]]
    lines = [
        f"\n## {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores ({platform.machine()}), budget "
        f"{args.budget_minutes:g} min per recipe",
        "",
        f"`python benchmarks/compare_recipes.py --recipes {args.recipes} --budget-minutes {args.budget_minutes:g}"
        + (" " + " ".join(extra) if extra else "") + "`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["recipe"], str(r["epochs"]), str(r["steps"]), f"{r['wall_s']:.0f}", f"{r['samples_per_s']:.1f}",
                 f"{r['step_s']:.3f}", f"{r['params'] / 1e6:.1f} M ({r['trainable'] / 1e6:.1f} M)",
                 f"{r['peak_rss_mb']:.0f}"]
        cells += [f"{100 * r['results'].get(t, {}).get(m, float('nan')):.1f}%" for t, m, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    out = HERE / "results" / "compare_recipes.md"
    if not out.exists():
        out.write_text("# Recipes side by side: same data, same wall-clock budget\n\nEach recipe's schedule is "
                       "sized to the budget from a short in-process timing; `trainer.max_time` is the hard stop. "
                       "Peak RSS is the training process's (data workers not included).\n")
    with out.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

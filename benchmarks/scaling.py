"""Scaling sweep: a grid of tiny CLIP models on growing data subsets, with power-law fits.

    pip install -e '.[bench]'   # matplotlib for the plot
    python benchmarks/scaling.py [--widths 64,128,256] [--depths 2,4] [--shards 1,2,4,8] \
        [--steps 200] [--points 5] [--work DIR]

After the OpenCLIP scaling-law study (Cherti et al., "Reproducible scaling laws for
contrastive language-image learning", CVPR 2023), at the size a CPU can run. Every model is
clip_tiny's shape with both towers at width W (heads W/64, embedding W) and depth D; the data
subsets are the first 1, 2, 4, 8 shards of the built-in google training set (190 pairs each,
nested). Every (model, subset) pair trains ``--steps`` steps of batch 64 with clip_tiny's
optimiser and schedule through `vlp fit` (a subprocess each); its EvalTasks callback evaluates
retrieval and category zero-shot on google test (385 unseen concepts) ``--points`` times, which
gives each run a learning curve; vlp's ThroughputMonitor counts the training FLOPs per sample
(forward + backward of the towers and objectives on the first batch's shapes, attention
included: Lightning's measure_flops on a meta-device copy of the model).

Errors (the study's choice of metrics): retrieval error = 1 - mean of image->text and
text->image recall@5; zero-shot error = 1 - category top1 (9 classes). Fits, each a pure
power law E = beta * X^alpha by least squares in log-log space:

- error vs compute: X = training FLOPs so far (steps x batch x FLOPs per sample), on the
  compute frontier (the lowest error reached at or below that compute) of every learning-curve
  point of the full-data runs;
- error vs parameters: X = parameters of both towers, final error of each model on the full
  data;
- error vs data: X = training pairs in the subset, final error of the largest model (each
  model's exponent is listed too).

Writes benchmarks/results/scaling.md (runs, fits, command, machine), scaling.json (raw runs)
and scaling.png. Finished runs are kept in ``--work`` (default /tmp/vlp-scaling) and reused,
so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ["emoji_google_test_retrieval", "emoji_google_test_category"]
SHARD = "builtin:emoji/google/train-{{000000..{last:06d}}}.tar"


def errors(metrics: dict) -> dict:
    r = metrics["emoji_google_test_retrieval"]
    return {"retrieval": 1 - (r["image_to_text_R@5"] + r["text_to_image_R@5"]) / 2,
            "zeroshot": 1 - metrics["emoji_google_test_category"]["top1"]}


def overrides(width: int, depth: int, shards: int, steps: int, points: int, batch: int, work: str) -> list[str]:
    heads = max(1, width // 64)
    callbacks = [
        {"class_path": "vlp.callbacks.EvalTasks",
         "init_args": {"tasks": TASKS, "every_n_steps": max(1, steps // points)}},
        {"class_path": "vlp.callbacks.ThroughputMonitor", "init_args": {"log_every_n_steps": 10}},
    ]
    return [
        "--recipe", "clip_tiny",
        "--model.towers.image.model_kwargs",
        json.dumps({"patch_size": 8, "embed_dim": width, "depth": depth, "num_heads": heads, "pre_norm": True}),
        "--model.towers.image.embed_dim", str(width),
        "--model.towers.text.width", str(width), "--model.towers.text.layers", str(depth),
        "--model.towers.text.heads", str(heads), "--model.towers.text.embed_dim", str(width),
        "--data.train_shards", SHARD.format(last=shards - 1), "--data.num_workers", str(min(2, shards)),
        "--data.batch_size", str(batch),
        "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
        "--trainer.callbacks", json.dumps(callbacks), "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", work,
    ]


def count(args: list[str]) -> dict:
    """Parameters of both towers and training pairs, from the built (untrained) model and data."""
    from vlp.cli import run_cli
    from vlp.data.shards import count_samples

    i = args.index("--trainer.default_root_dir")
    cli = run_cli(args[:i] + args[i + 2:] + ["--trainer.logger", "false"], run=False)
    return {"params": sum(p.numel() for p in cli.model.towers.parameters()),
            "pairs": sum(count_samples(s) for s in cli.datamodule.shards)}


def train(name: str, args: list[str], work: Path) -> dict:
    out = work / f"{name}.json"
    if out.exists():
        return json.loads(out.read_text())
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vlp.cli", "fit", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    logs = Path(next(line for line in proc.stdout.splitlines() if line.startswith("logs: ")).split(": ", 1)[1])
    history = json.loads((logs / "eval.json").read_text())["history"]
    with open(logs / "metrics.csv") as f:
        flops = [float(r["throughput/flops_per_sample"]) for r in csv.DictReader(f)
                 if r.get("throughput/flops_per_sample")]
    run = {"name": name, "flops_per_sample": flops[-1], "seconds": time.perf_counter() - start,
           "curve": [{"step": h["step"], **errors(h["metrics"])} for h in history]}
    out.write_text(json.dumps(run))
    return run


def fit(xs: list[float], ys: list[float]) -> dict:
    """E = beta * X^alpha by least squares on (log X, log E); r2 in log space."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    n = len(lx)
    mx, my = sum(lx) / n, sum(ly) / n
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:  # fewer than two distinct x: no slope
        return {"alpha": float("nan"), "beta": float("nan"), "r2": float("nan"), "n": n}
    alpha = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx
    beta = math.exp(my - alpha * mx)
    ss_res = sum((b - (my + alpha * (a - mx))) ** 2 for a, b in zip(lx, ly))
    ss_tot = sum((b - my) ** 2 for b in ly)
    return {"alpha": alpha, "beta": beta, "r2": 1 - ss_res / ss_tot if ss_tot else float("nan"), "n": n}


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points whose error is below that of every point with less compute."""
    best, out = float("inf"), []
    for c, e in sorted(points):
        if e < best:
            best = e
            out.append((c, e))
    return out


def analyse(runs: list[dict], batch: int) -> dict:
    full = max(r["shards"] for r in runs)
    largest = max(r["params"] for r in runs)
    fits = {}
    for metric in ("retrieval", "zeroshot"):
        pts = [(p["step"] * batch * r["flops_per_sample"], p[metric]) for r in runs if r["shards"] == full
               for p in r["curve"] if p["step"] > 0]
        front = frontier(pts)
        finals = {r["name"]: r["curve"][-1][metric] for r in runs}
        by_params = [(r["params"], finals[r["name"]]) for r in runs if r["shards"] == full]
        per_model = {}
        for params in sorted({r["params"] for r in runs}):
            data = sorted((r["pairs"], finals[r["name"]]) for r in runs if r["params"] == params)
            if len(data) > 1:
                per_model[params] = fit(*zip(*data))
        fits[metric] = {
            "compute": {**fit(*zip(*front)), "frontier": front},
            "params": fit(*zip(*sorted(by_params))),
            "data": per_model.get(largest),
            "data_per_model": per_model,
        }
    return fits


def plot(runs: list[dict], fits: dict, batch: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    full = max(r["shards"] for r in runs)
    models = sorted({(r["params"], r["width"], r["depth"]) for r in runs})
    colours = {m[0]: plt.cm.viridis(i / max(1, len(models) - 1)) for i, m in enumerate(models)}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for row, metric in enumerate(("retrieval", "zeroshot")):
        f = fits[metric]
        ax = axes[row, 0]
        for params, width, depth in models:
            r = next(r for r in runs if r["params"] == params and r["shards"] == full)
            pts = [(p["step"] * batch * r["flops_per_sample"], p[metric]) for p in r["curve"] if p["step"] > 0]
            ax.plot(*zip(*pts), marker=".", color=colours[params], alpha=0.8, label=f"W{width} D{depth}")
        cs = [c for c, _ in f["compute"]["frontier"]]
        ax.plot(cs, [e for _, e in f["compute"]["frontier"]], "kx", label="compute frontier")
        grid = [min(cs) * (max(cs) / min(cs)) ** (i / 20) for i in range(21)]
        ax.plot(grid, [f["compute"]["beta"] * c ** f["compute"]["alpha"] for c in grid], "k--",
                label=f"frontier fit: alpha={f['compute']['alpha']:.3f}")
        ax.set_xlabel("training FLOPs")
        ax = axes[row, 1]
        xs = sorted((r["params"], r["curve"][-1][metric]) for r in runs if r["shards"] == full)
        ax.plot(*zip(*xs), "o", color="tab:blue")
        grid = [xs[0][0] * (xs[-1][0] / xs[0][0]) ** (i / 20) for i in range(21)]
        ax.plot(grid, [f["params"]["beta"] * n ** f["params"]["alpha"] for n in grid], "k--",
                label=f"fit: alpha={f['params']['alpha']:.3f}")
        ax.set_xlabel(f"parameters (full data, {r['steps']} steps)")
        ax = axes[row, 2]
        for params, width, depth in models:
            pts = sorted((r["pairs"], r["curve"][-1][metric]) for r in runs if r["params"] == params)
            fm = f["data_per_model"].get(params)
            label = f"W{width} D{depth}" + (f": alpha={fm['alpha']:.3f}" if fm else "")
            ax.plot(*zip(*pts), marker="o", color=colours[params], label=label)
        ax.set_xlabel("training pairs (nested subsets)")
        for ax in axes[row]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
            ax.set_ylabel(f"{metric} error")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--depths", default="2,4")
    ap.add_argument("--shards", default="1,2,4,8", help="nested subsets: the first N google training shards")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--points", type=int, default=5, help="evaluations per run (learning curve)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--work", default="/tmp/vlp-scaling")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    grid = [(w, d, s) for w in map(int, args.widths.split(",")) for d in map(int, args.depths.split(","))
            for s in map(int, args.shards.split(","))]
    for i, (width, depth, shards) in enumerate(grid):
        name = f"w{width}_d{depth}_s{shards}_n{args.steps}_b{args.batch_size}"
        run_args = overrides(width, depth, shards, args.steps, args.points, args.batch_size, str(work / "logs"))
        run = {**train(name, run_args, work), **count(run_args), "width": width, "depth": depth, "shards": shards,
               "steps": args.steps}
        runs.append(run)
        print(f"[{i + 1}/{len(grid)}] {name}: {run['params'] / 1e6:.2f} M params, {run['pairs']} pairs, "
              f"{run['flops_per_sample'] / 1e6:.1f} MFLOPs/sample, retrieval error {run['curve'][-1]['retrieval']:.3f}, "
              f"zero-shot error {run['curve'][-1]['zeroshot']:.3f}, {run['seconds']:.0f} s", flush=True)
    fits = analyse(runs, args.batch_size)
    command = (f"python benchmarks/scaling.py --widths {args.widths} --depths {args.depths} --shards {args.shards} "
               f"--steps {args.steps} --points {args.points} --batch-size {args.batch_size}")
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    (HERE / "results" / "scaling.json").write_text(json.dumps({"command": command, "runs": runs, "fits": fits},
                                                              indent=1))
    plot(runs, fits, args.batch_size, HERE / "results" / "scaling.png", f"{command}  ({machine})")
    lines = [
        "# Scaling sweep: tiny CLIP models on nested subsets of the built-in data",
        "",
        f"{time.strftime('%Y-%m-%d')}, {machine}, {sum(r['seconds'] for r in runs):.0f} s of training runs. `{command}`",
        "",
        "Error = 1 - mean(i->t, t->i) recall@5 (retrieval) and 1 - category top1 (zero-shot, 9 classes), "
        "both on google test (unseen concepts). Fits E = beta * X^alpha in log-log space "
        "(see the script's docstring). Plot: `scaling.png`; raw runs: `scaling.json`.",
        "",
        "| fit | retrieval alpha | retrieval beta | retrieval r2 | zero-shot alpha | zero-shot beta | zero-shot r2 |"
        " points |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("compute", "error vs compute (frontier)"), ("params", "error vs parameters (full data)"),
                       ("data", "error vs data (largest model)")):
        a, b = fits["retrieval"][key], fits["zeroshot"][key]
        lines.append(f"| {label} | {a['alpha']:.3f} | {a['beta']:.3g} | {a['r2']:.2f} | {b['alpha']:.3f} | "
                     f"{b['beta']:.3g} | {b['r2']:.2f} | {a['n']} / {b['n']} |")
    lines += ["", "Error vs data, per model (alpha retrieval / zero-shot): " + ", ".join(
        f"W{r['width']} D{r['depth']} {fits['retrieval']['data_per_model'][r['params']]['alpha']:.3f} / "
        f"{fits['zeroshot']['data_per_model'][r['params']]['alpha']:.3f}"
        for r in runs if r["shards"] == max(x["shards"] for x in runs)
        if r["params"] in fits["retrieval"]["data_per_model"]) + ".", "",
        "Seconds: wall time of each `vlp fit` (start-up and evaluations included; not a speed measurement). "
        "Chance level: retrieval error 0.987 (recall@5 of 385), zero-shot error 0.889.", "",
        "| model | params | pairs | MFLOPs / sample | retrieval error | zero-shot error | seconds |",
        "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| W{r['width']} D{r['depth']} | {r['params'] / 1e6:.2f} M | {r['pairs']} | "
                     f"{r['flops_per_sample'] / 1e6:.1f} | {r['curve'][-1]['retrieval']:.3f} | "
                     f"{r['curve'][-1]['zeroshot']:.3f} | {r['seconds']:.0f} |")
    (HERE / "results" / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Train several recipes for the same wall-clock budget on the same data and compare them.

    pip install -e '.[bench]'   # matplotlib for the plot
    python benchmarks/compare_recipes.py --recipes clip_tiny,flip_tiny,slip_tiny,siglip_tiny \
        --budget-minutes 4 [--steps N] [--points 6] [extra vlp fit overrides ...]
    # per-language retrieval (CLIPPO vs CLIP), its own result files:
    python benchmarks/compare_recipes.py --recipes clip_tiny,clippo_tiny,clippo_multilingual_tiny \
        --budget-minutes 4 --languages en,zh,ja,de,fr --name compare_languages

Adding a recipe to the comparison is naming it in ``--recipes``. For each recipe: time a few
real training steps and one learning-curve evaluation in-process (data loading included),
choose the number of epochs whose schedule fits 80% of the budget after the curve's
evaluations (the rest is for start-up and the final evaluation), then run `vlp fit` in a
subprocess with that schedule and ``trainer.max_time`` as a hard stop. With ``--steps N``
every recipe trains N steps instead (same steps, no time limit). The recipe's EvalTasks
callback also evaluates google-test retrieval and category zero-shot about ``--points``
times during training; its ``eval/train_seconds`` (training wall-clock without the
evaluations) is the time axis of the curve.

``--languages`` adds the built-in google-test retrieval task of each language
(``emoji_google_test_retrieval_<lang>``; ``en`` is ``emoji_google_test_retrieval``) to every
recipe's end-of-run evaluation and reports its R@1 and R@5 both ways instead of the default
columns. ``--name`` names the result files (default ``compare_recipes``).

Reports wall time, steps, samples/s, parameters, peak memory of the training process, and
the recipe's end-of-run emoji evaluation; appends the table to
benchmarks/results/compare_recipes.md, writes the curves to compare_recipes_curves.json and
plots accuracy against training time in compare_recipes.png. Recipes run one after another,
alone.
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

from report import append_result, section_lines

from vlp.recipes import load_recipe

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


CURVE = [("emoji_google_test_retrieval", "image_to_text_R@1", "google test i->t R@1"),
         ("emoji_google_test_category", "top1", "google test category zero-shot top1")]


def calibrate(recipe: str, extra: list[str], steps: int) -> dict:
    """Seconds per training step (median of ``steps`` after 2 warm-up steps), seconds of one
    learning-curve evaluation, batches per epoch, parameter count; in-process, real data."""
    import statistics

    import torch

    from vlp.cli import run_cli
    from vlp.eval.tasks import load_task

    cli = run_cli(["--recipe", recipe, "--trainer.logger", "false", *extra], run=False)
    model, data = cli.model.train(), cli.datamodule
    model.log = lambda *a, **k: None

    start = time.perf_counter()  # the curve's evaluations of the untrained model: its step 0
    initial = {t: load_task(t).run(model.eval(), data.eval_data(None))["metrics"] for t in {t for t, _, _ in CURVE}}
    eval_s = time.perf_counter() - start
    model.train()
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
    return {"step_s": statistics.median(times), "eval_s": eval_s, "initial": initial, "batches_per_epoch": len(loader),
            "batch_size": data.batch_size,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def language_metrics(languages: list[str]) -> list[tuple[str, str, str]]:
    """Google-test retrieval per language: R@1 and R@5 image->text and text->image."""
    out = []
    for lang in languages:
        task = "emoji_google_test_retrieval" + ("" if lang == "en" else f"_{lang}")
        for metric, label in (("image_to_text_R@1", "i->t R@1"), ("image_to_text_R@5", "i->t R@5"),
                              ("text_to_image_R@1", "t->i R@1"), ("text_to_image_R@5", "t->i R@5")):
            out.append((task, metric, f"{lang} {label}"))
    return out


def curve_callbacks(recipe: str, every_n_steps: int, tasks: list[str] = ()) -> str:
    """The recipe's callbacks with its EvalTasks also evaluating the curve's tasks every N steps
    (and ``tasks`` at the end, beside the recipe's own)."""
    callbacks = load_recipe(recipe)["trainer"]["callbacks"]
    evals = [c for c in callbacks if c["class_path"].endswith("EvalTasks")]
    if not evals:
        raise SystemExit(f"{recipe} has no EvalTasks callback to evaluate with")
    args = evals[0]["init_args"]
    args.update(every_n_steps=every_n_steps, periodic_tasks=sorted({t for t, _, _ in CURVE}))
    args["tasks"] = list(args.get("tasks") or []) + [t for t in tasks if t not in (args.get("tasks") or [])]
    return json.dumps(callbacks)


def run(recipe: str, extra: list[str], budget_s: float, cal: dict, points: int, steps: int | None,
        tasks: list[str] = ()) -> dict:
    if steps:
        epochs, planned = None, steps
        limits = ["--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1"]
    else:
        train_s = 0.8 * budget_s - points * cal["eval_s"]
        epochs = max(1, int(train_s / (cal["step_s"] * cal["batches_per_epoch"])))
        planned = epochs * cal["batches_per_epoch"]
        hms = time.strftime("%H:%M:%S", time.gmtime(budget_s))
        limits = ["--trainer.max_epochs", str(epochs), "--trainer.max_time", f"00:{hms}"]
    every = max(1, round(planned / points))
    work = tempfile.mkdtemp(prefix=f"vlp-compare-{recipe}-")
    cmd = [sys.executable, "-c", WRAPPER, "fit", "--recipe", recipe, *limits, "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", work, "--trainer.callbacks", curve_callbacks(recipe, every, tasks), *extra]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{recipe} failed:\n{out.stderr[-3000:]}")
    logs = next(line for line in out.stdout.splitlines() if line.startswith("logs: ")).split(": ", 1)[1]
    evaluation = json.loads((Path(work) / logs / "eval.json").read_text())
    peak = float(next(line for line in out.stderr.splitlines() if line.startswith("peak_rss_mb")).split()[1])
    done = evaluation["step"]
    results = {r["task"]: r["metrics"] for r in evaluation["results"]}
    curve = [{"step": 0, "train_seconds": 0.0, "metrics": cal["initial"]}] + evaluation["history"]
    train_s = evaluation["history"][-1]["train_seconds"]
    return {"recipe": recipe, "epochs": epochs, "steps": done, "wall_s": wall, "train_s": train_s,
            "samples_per_s": done * cal["batch_size"] / wall, "train_samples_per_s": done * cal["batch_size"] / train_s,
            "peak_rss_mb": peak, "results": results, "curve": curve, **cal}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE), figsize=(6 * len(CURVE), 4.2))
    for ax, (task, metric, label) in zip(axes, CURVE):
        for r in rows:
            pts = [(h["train_seconds"], 100 * h["metrics"][task][metric]) for h in r["curve"] if task in h["metrics"]]
            ax.plot(*zip(*pts), marker="o", label=f"{r['recipe']} ({r['steps']} steps)")
        ax.set_xlabel("training wall-clock (s, evaluations excluded)")
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="clip_tiny,flip_tiny,slip_tiny,siglip_tiny")
    ap.add_argument("--budget-minutes", type=float, default=4.0)
    ap.add_argument("--steps", type=int, help="train every recipe this many steps instead of a time budget")
    ap.add_argument("--points", type=int, default=6, help="learning-curve evaluations during training")
    ap.add_argument("--calibrate-steps", type=int, default=10)
    ap.add_argument("--languages", help="report google-test retrieval in these languages (en,zh,ja,de,fr)")
    ap.add_argument("--name", default="compare_recipes", help="result files' name")
    args, extra = ap.parse_known_args()
    budget = 60 * args.budget_minutes
    metrics = language_metrics(args.languages.split(",")) if args.languages else METRICS
    tasks = sorted({t for t, _, _ in metrics})
    rows = []
    for recipe in args.recipes.split(","):
        cal = calibrate(recipe, extra, args.calibrate_steps)
        row = run(recipe, extra, budget, cal, args.points, args.steps, tasks)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("results", "curve", "initial")}), flush=True)
    head = ["recipe", "epochs", "steps", "wall s", "train s", "samples/s (whole run)", "samples/s (training)",
            "train step s", "params (trainable)", "peak RSS MB", *[m[2] for m in metrics]]
    limit = f"{args.steps} steps" if args.steps else f"budget {args.budget_minutes:g} min"
    command = (f"python benchmarks/compare_recipes.py --recipes {args.recipes} "
               + (f"--steps {args.steps}" if args.steps else f"--budget-minutes {args.budget_minutes:g}")
               + (f" --languages {args.languages}" if args.languages else "")
               + (f" --name {args.name}" if args.name != "compare_recipes" else "")
               + (" " + " ".join(extra) if extra else ""))
    lines = section_lines(f"{os.cpu_count()} CPU cores ({platform.machine()}), {limit} per recipe", command, head)
    for r in rows:
        cells = [r["recipe"], str(r["epochs"] or "-"), str(r["steps"]), f"{r['wall_s']:.0f}", f"{r['train_s']:.0f}",
                 f"{r['samples_per_s']:.1f}", f"{r['train_samples_per_s']:.1f}",
                 f"{r['step_s']:.3f}", f"{r['params'] / 1e6:.1f} M ({r['trainable'] / 1e6:.1f} M)",
                 f"{r['peak_rss_mb']:.0f}"]
        cells += [f"{100 * r['results'].get(t, {}).get(m, float('nan')):.1f}%" for t, m, _ in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    stem = args.name + ("_steps" if args.steps else "")
    (HERE / "results" / f"{stem}_curves.json").write_text(json.dumps(
        {"command": command, "curves": {r["recipe"]: r["curve"] for r in rows}}, indent=1))
    plot(rows, HERE / "results" / f"{stem}.png", f"{command}  ({os.cpu_count()} CPU cores)")
    lines.append(f"\nCurves: `{stem}_curves.json`, plot `{stem}.png` (accuracy against training wall-clock).")
    append_result(args.name, "# Recipes side by side: same data, same wall-clock budget\n\nEach recipe's schedule is "
                  "sized to the budget from a short in-process timing; `trainer.max_time` is the hard stop. "
                  "Peak RSS is the training process's (data workers not included).\n", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Re-tune the tiny recipes on validation, then read the test numbers once.

    python benchmarks/retune.py [--recipes clip_tiny,siglip_tiny,...] [--lr-factors 0.5,1,2]
                                [--holdout 0.1] [--seed 0] [--min-gain 1.0]

Every tiny recipe inherits clip_tiny's optimiser (lr 5e-4, chosen in earlier sessions while
looking at the test tasks). Here the learning rate of each recipe is chosen on validation only:

1. Tuning: the recipe at lr x each factor, seed ``--seed``, with ``data.holdout`` (a key-hash
   hold-out of the training concepts: validation concepts are unseen in training). Its eval
   callback runs the validation tasks only (retrieval, zero-shot category on the held-out
   samples); no test task is run. Score: the validation retrieval's R@5, mean of both ways.
2. Choice (rule fixed before the runs): the best-scoring lr replaces the shipped one only if it
   beats the shipped lr's score by at least ``--min-gain`` points (about one seed-to-seed
   standard deviation of R@5 here); otherwise the shipped lr stays. A best lr at an end of the
   grid gets one more point beyond it (half the lowest / twice the highest).
3. Test, once: for each recipe whose lr changed, the recipe as shipped and with the chosen lr,
   all training data, the recipe's own test tasks, at ``--seed``. A recipe whose lr did not
   change has unchanged test numbers (the same run).

lit_tiny locks an image tower from a clip_tiny checkpoint: clip_tiny as it ships after this
tuning (its chosen lr); for tuning the run with the hold-out (trained without the validation
concepts), for the test a run on all training data.

Runs are cached in benchmarks/results/retune_runs.json (the script resumes where it stopped).
Writes benchmarks/results/retune.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from report import append_result

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from vlp.recipes import load_recipe  # noqa: E402

CACHE = HERE / "results" / "retune_runs.json"
RUNS = Path(os.environ.get("VLP_RETUNE_DIR", "/tmp/vlp_retune"))
DEFAULT = "clip_tiny,siglip_tiny,flip_tiny,slip_tiny,coca_tiny,clippo_tiny,align_tiny,lit_tiny"


def cache() -> dict:
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def remember(key: str, value: dict) -> None:
    done = cache()
    done[key] = value
    CACHE.write_text(json.dumps(done, indent=1, sort_keys=True))


def val_callbacks(recipe: str) -> str:
    """The recipe's callbacks with its EvalTasks running the validation tasks only."""
    callbacks = load_recipe(recipe, var_values={"ckpt_every_n_steps": 100000})["trainer"]["callbacks"]
    for cb in callbacks:
        if cb["class_path"].endswith("EvalTasks"):
            cb["init_args"] = {"tasks": [], "val_tasks": ["retrieval", "zeroshot:category"]}
    return yaml.safe_dump(callbacks, default_flow_style=True, width=10_000).strip()


def fit(key: str, recipe: str, extra: list[str]) -> dict:
    """``vlp fit`` (cached by ``key``): eval.json and the last checkpoint's path."""
    done = cache()
    if key in done:
        return done[key]
    root = RUNS / re.sub(r"[^\w.-]", "_", key)
    cmd = [sys.executable, "-m", "vlp.cli", "fit", "--recipe", recipe, "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(root), "--vars.ckpt_every_n_steps", "100000", *extra]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        sys.exit(f"vlp fit failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    logs = Path(re.search(r"^logs: (.*)$", out.stdout, re.M).group(1))
    ev = json.loads((logs / "eval.json").read_text())
    ckpts = sorted(logs.glob("checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    value = {"eval": ev, "ckpt": str(ckpts[-1]) if ckpts else None, "seconds": time.perf_counter() - start,
             "cmd": " ".join(cmd[2:])}
    remember(key, value)
    return value


def score(ev: dict) -> float:
    m = next(r["metrics"] for r in ev["val_results"] if r["task"] == "retrieval")
    return 100 * (m["image_to_text_R@5"] + m["text_to_image_R@5"]) / 2


def category(ev: dict) -> float:
    return 100 * next(r["metrics"]["top1"] for r in ev["val_results"] if r["task"].startswith("zeroshot"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default=DEFAULT)
    ap.add_argument("--lr-factors", default="0.5,1,2")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-gain", type=float, default=1.0)
    ap.add_argument("--no-test", action="store_true", help="tune only")
    args = ap.parse_args()
    recipes = args.recipes.split(",")
    factors = [float(f) for f in args.lr_factors.split(",")]
    assert 1.0 in factors, "the shipped lr (factor 1) is the reference"
    seed = ["--seed_everything", str(args.seed)]
    holdout = ["--data.holdout", str(args.holdout)]
    tuned: dict[str, dict] = {}

    def shipped_clip_lr() -> float:
        """clip_tiny's lr after this tuning (the shipped one if clip_tiny is not tuned here)."""
        if "clip_tiny" in tuned:
            return tuned["clip_tiny"]["chosen"]
        return float(load_recipe("clip_tiny")["model"]["optim"]["lr"])

    def tune_recipe(recipe: str) -> dict:
        lr0 = float(load_recipe(recipe)["model"]["optim"]["lr"])
        extra = []
        if recipe == "lit_tiny":  # the locked tower: clip_tiny as it ships after this tuning
            base_lr = shipped_clip_lr()
            base = fit(f"tune|clip_tiny|{base_lr:g}|{args.holdout}|{args.seed}", "clip_tiny",
                       [*seed, *holdout, "--trainer.callbacks", val_callbacks("clip_tiny"),
                        "--model.optim.lr", str(base_lr)])
            extra = ["--model.towers.image.init_args.init_from", base["ckpt"]]
        rows = {}

        def tune(f: float) -> None:
            lr = lr0 * f
            run = fit(f"tune|{recipe}|{lr:g}|{args.holdout}|{args.seed}", recipe,
                      [*seed, *extra, *holdout, "--trainer.callbacks", val_callbacks(recipe),
                       "--model.optim.lr", str(lr)])
            rows[lr] = {"factor": f, "score": score(run["eval"]), "category": category(run["eval"]),
                        "seconds": run["seconds"]}
            print(f"{recipe} lr {lr:g}: validation R@5 {rows[lr]['score']:.1f}, category {rows[lr]['category']:.1f} "
                  f"({run['seconds']:.0f} s)", flush=True)

        for f in factors:
            tune(f)
        # a best lr at an end of the grid: one more point beyond it (once per side)
        for edge, step in ((min(factors), 0.5), (max(factors), 2.0)):
            if max(rows, key=lambda lr: rows[lr]["score"]) == lr0 * edge:
                tune(edge * step)
        rows = dict(sorted(rows.items()))
        best = max(rows, key=lambda lr: rows[lr]["score"])
        chosen = best if rows[best]["score"] - rows[lr0]["score"] >= args.min_gain else lr0
        return {"lr0": lr0, "rows": rows, "best": best, "chosen": chosen}

    def test_recipe(recipe: str, t: dict) -> dict:
        extra = []
        if recipe == "lit_tiny":
            base = fit(f"test|clip_tiny|{shipped_clip_lr():g}|{args.seed}", "clip_tiny",
                       [*seed, "--model.optim.lr", str(shipped_clip_lr())])
            extra = ["--model.towers.image.init_args.init_from", base["ckpt"]]
        out = {}
        for lr in (t["lr0"], t["chosen"]):
            run = fit(f"test|{recipe}|{lr:g}|{args.seed}", recipe, [*seed, *extra, "--model.optim.lr", str(lr)])
            out[lr] = {r["task"]: r["metrics"] for r in run["eval"]["results"]}
        return out

    for recipe in recipes:  # clip_tiny before lit_tiny, which locks its tower
        tuned[recipe] = tune_recipe(recipe)
    changed = [r for r in recipes if tuned[r]["chosen"] != tuned[r]["lr0"]]
    tests = {} if args.no_test else {r: test_recipe(r, tuned[r]) for r in changed}
    write(args, tuned, tests)


def write(args, tuned: dict, tests: dict) -> None:
    cmd = (f"python benchmarks/retune.py --recipes {args.recipes} --lr-factors {args.lr_factors} --holdout "
           f"{args.holdout} --seed {args.seed} --min-gain {args.min_gain}")
    columns = sorted({r["factor"] for t in tuned.values() for r in t["rows"].values()})
    lines = [f"\n## {time.strftime('%Y-%m-%d')}", "", f"`{cmd}`", "",
             f"Tuning: seed {args.seed}, hold-out {args.holdout} of the training concepts, validation only; a best "
             "lr at an end of the grid got one more point beyond it. Score: "
             "validation retrieval R@5, mean of both ways (category: zero-shot top1 over the 9 categories on the "
             f"validation images, shown, not used). Rule: the best lr replaces the shipped one only if it gains "
             f">= {args.min_gain} points.", "",
             "| recipe | " + " | ".join(f"lr x{f:g}" for f in columns) + " | chosen |",
             "|---|" + "---|" * (len(columns) + 1)]
    for recipe, t in tuned.items():
        by_factor = {r["factor"]: r for r in t["rows"].values()}
        cells = [f"{by_factor[f]['score']:.1f} (cat {by_factor[f]['category']:.1f})" if f in by_factor else "-"
                 for f in columns]
        change = "shipped" if t["chosen"] == t["lr0"] else "changed"
        lines.append(f"| {recipe} (lr {t['lr0']:g}) | " + " | ".join(cells) + f" | {t['chosen']:g} ({change}) |")
    if tests:
        lines += ["", f"Test, once (seed {args.seed}, all training data), shipped lr -> chosen lr:", ""]
        for recipe, by_lr in tests.items():
            (lr0, before), (lr1, after) = by_lr.items()
            lines.append(f"- {recipe}: lr {lr0:g} -> {lr1:g}")
            for task, metrics in before.items():
                shown = [k for k in metrics if k in ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@5",
                                                      "top1", "cider")]
                lines.append(f"  - {task}: " + ", ".join(
                    f"{k} {100 * metrics[k]:.1f} -> {100 * after[task][k]:.1f}" for k in shown))
    else:
        lines += ["", "No recipe's lr changed: the test numbers are those of the shipped recipes."]
    append_result("retune", "# The tiny recipes re-tuned on validation\n", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

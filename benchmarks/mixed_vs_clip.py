"""clip_mixed_tiny against clip_tiny on the style-shift tasks, with the mixing weight chosen on
validation.

    python benchmarks/mixed_vs_clip.py [--weights 0.3,0.5,0.7] [--seeds 0,1,2] [--holdout 0.1]

1. Tuning: clip_mixed_tiny at seed 0 for each google weight w (twitter 1 - w), with
   ``data.holdout`` (a key-hash hold-out of both styles' training concepts: validation concepts are
   unseen in either style); the score is the mean of the validation retrieval's R@5 both ways.
   No test task is looked at (the runs' callbacks evaluate validation only).
2. Test, once: the chosen w at every seed, without the hold-out (the recipe as shipped, all
   training data), every built-in task at the end. clip_tiny at the same seeds for the side by side
   (``--clip-seeds`` reuses nothing: it reruns them).
Writes benchmarks/results/mixed_vs_clip.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import append_result

SHOW = [("emoji_twitter_test_retrieval", "image_to_text_R@1"), ("emoji_twitter_test_retrieval", "image_to_text_R@5"),
        ("emoji_twitter_test_retrieval", "text_to_image_R@5"), ("emoji_twitter_test_category", "top1"),
        ("emoji_google_test_retrieval", "image_to_text_R@5"), ("emoji_google_test_category", "top1")]


def fit(recipe: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vlp.cli", "fit", "--recipe", recipe, "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", tmp, "--vars.ckpt_every_n_steps", "100000", *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            sys.exit(f"vlp fit failed:\n{out.stderr[-3000:]}")
        logs = re.search(r"^logs: (.*)$", out.stdout, re.M).group(1)
        return json.loads((Path(logs) / "eval.json").read_text())


def mix(w: float) -> list[str]:
    return ["--data.train_shards", f"[{{shards: 'builtin:emoji/google/train-*.tar', weight: {w}}}, "
                                   f"{{shards: 'builtin:emoji/twitter/train-*.tar', weight: {1 - w:.4g}}}]"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="0.3,0.5,0.7")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--holdout", type=float, default=0.1)
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    tuning = {}
    val_only = ("[{class_path: vlp.callbacks.EvalTasks, init_args: {tasks: [], val_tasks: [retrieval]}}]")
    for w in weights:
        ev = fit("clip_mixed_tiny", [*mix(w), "--data.holdout", str(args.holdout), "--seed_everything", "0",
                                     "--trainer.callbacks", val_only])
        val = {r["task"]: r["metrics"] for r in ev["val_results"]}
        m = next(iter(val.values()))
        tuning[w] = (m["image_to_text_R@5"] + m["text_to_image_R@5"]) / 2
        print(f"w_google {w}: validation R@5 mean {tuning[w]:.4f}", flush=True)
    best = max(tuning, key=tuning.get)
    rows = {"clip_tiny": [], f"clip_mixed_tiny (w_google {best})": []}
    for seed in seeds:
        for name, recipe, extra in (("clip_tiny", "clip_tiny", []),
                                    (f"clip_mixed_tiny (w_google {best})", "clip_mixed_tiny", mix(best))):
            ev = fit(recipe, [*extra, "--seed_everything", str(seed)])
            rows[name].append({r["task"]: r["metrics"] for r in ev["results"]})
            print(name, seed, {f"{t}/{m}": rows[name][-1][t][m] for t, m in SHOW}, flush=True)
    lines = [f"\n## {time.strftime('%Y-%m-%d')}", "",
             f"`python benchmarks/mixed_vs_clip.py --weights {args.weights} --seeds {args.seeds} "
             f"--holdout {args.holdout}`", "",
             "Tuning (clip_mixed_tiny, seed 0, hold-out " f"{args.holdout} of the training concepts; validation "
             "retrieval, mean R@5 both ways): " + ", ".join(f"w_google {w}: {100 * v:.1f}%" for w, v in tuning.items())
             + f"; chosen {best}.", "",
             f"Test, once, seeds {args.seeds} (mean +- std):", "",
             "| recipe | " + " | ".join(f"{t.replace('emoji_', '')} {m}" for t, m in SHOW) + " |",
             "|---|" + "---|" * len(SHOW)]
    for name, runs in rows.items():
        cells = []
        for t, m in SHOW:
            vals = [100 * r[t][m] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} +- {sd:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    append_result("mixed_vs_clip", "# Both artwork styles mixed vs one style: the style-shift tasks\n",
                  "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Wall time and accuracy of a recipe's default run (issue: the `vlp fit --recipe clip_tiny` target).

    python benchmarks/default_run.py --recipe clip_tiny [--runs 1] [extra vlp fit overrides ...]

Runs `vlp fit` in a subprocess, times it end to end (start-up, training, final
evaluation), reads the `eval.json` the EvalTasks callback wrote, and appends a row
per run to benchmarks/results/default_run.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import append_to

HERE = Path(__file__).resolve().parent
KEYS = [  # (task, metric, column)
    ("emoji_google_test_retrieval", "image_to_text_R@1", "google test i->t R@1"),
    ("emoji_google_test_retrieval", "image_to_text_R@5", "google test i->t R@5"),
    ("emoji_twitter_test_retrieval", "image_to_text_R@1", "twitter test i->t R@1"),
    ("emoji_twitter_test_retrieval", "image_to_text_R@5", "twitter test i->t R@5"),
    ("emoji_google_test_category", "top1", "google test category top1"),
]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, threads {torch.get_num_threads()}"


def one_run(recipe: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vlp.cli", "fit", "--recipe", recipe, "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", tmp, *extra]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if out.returncode:
            sys.exit(f"vlp fit failed:\n{out.stderr[-3000:]}")
        logs = re.search(r"^logs: (.*)$", out.stdout, re.M).group(1)
        result = json.loads((Path(logs) / "eval.json").read_text())
    metrics = {r["task"]: r["metrics"] for r in result["results"]}
    return {"seconds": seconds, "step": result["step"], "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="clip_tiny")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "default_run.md"))
    args, extra = parser.parse_known_args()
    out = Path(args.out)
    head = " | ".join(["recipe", "overrides", "wall s", "steps"] + [column for _, _, column in KEYS])
    header = f"| {head} |\n|{' --- |' * (4 + len(KEYS))}\n"
    for _ in range(args.runs):
        r = one_run(args.recipe, extra)
        cells = [args.recipe, " ".join(extra) or "-", f"{r['seconds']:.0f}", str(r["step"])]
        cells += [f"{100 * r['metrics'][t][m]:.1f}%" for t, m, _ in KEYS]
        append_to(out, header, "| " + " | ".join(cells) + " |")
        print(" | ".join(cells), flush=True)
    append_to(out, header,
              f"\n<!-- python benchmarks/default_run.py --recipe {args.recipe} {' '.join(extra)}; {machine()} -->")


if __name__ == "__main__":
    main()

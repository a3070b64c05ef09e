"""Every built-in eval task on a checkpoint: JSON results plus a merged table.

    python benchmarks/eval_builtin.py --ckpt runs/clip_tiny/version_0/checkpoints/last.ckpt --name clip_tiny

Without --ckpt it first trains `vlp fit --recipe clip_tiny` (seeded, about 4-6 minutes on 2
cores) in a temporary folder. Results go to benchmarks/results/eval_builtin/ (one JSON per
checkpoint and task, results.md, results.csv); running it for other checkpoints adds columns.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "eval_builtin"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", help="checkpoint to evaluate (default: train clip_tiny first)")
    ap.add_argument("--name", default="clip_tiny", help="column label")
    ap.add_argument("--tasks", default="emoji_*")
    args = ap.parse_args()
    ckpt = args.ckpt
    if ckpt is None:
        work = tempfile.mkdtemp(prefix="vlp-eval-builtin-")
        out = subprocess.run([sys.executable, "-m", "vlp.cli", "fit", "--recipe", "clip_tiny",
                              "--trainer.enable_progress_bar", "false"], cwd=work, capture_output=True, text=True,
                             check=True)
        line = next(x for x in out.stdout.splitlines() if x.startswith("checkpoint: "))
        ckpt = str(Path(work) / line.split(": ", 1)[1])
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlp.cli", "eval", "--ckpt", ckpt, "--task", args.tasks,
                    "--out", str(OUT), "--name", args.name], check=True)
    seconds = time.perf_counter() - start
    subprocess.run([sys.executable, "-m", "vlp.cli", "eval", "--table", str(OUT)], check=True,
                   stdout=subprocess.DEVNULL)
    record = json.loads(next(OUT.glob(f"{args.name.replace('/', '__')}--*.json")).read_text())
    md = OUT / "results.md"
    md.write_text(md.read_text() + f"\nLast run: {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
                  f"`{args.name}` = a checkpoint of recipe {record['model']['recipe']} at step "
                  f"{record['model']['global_step']}, all tasks evaluated in {seconds:.0f} s with "
                  f"`python benchmarks/eval_builtin.py {' '.join(sys.argv[1:])}`.\n")
    print(md.read_text())


if __name__ == "__main__":
    main()

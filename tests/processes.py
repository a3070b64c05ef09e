"""Runs of `vlp fit` in separate processes for the multi-process tests (DDP, FSDP2, gradient
cache, several nodes): a clean environment, a free port, the two-process fit of a tiny clip_tiny
and its per-step losses from the CSV log."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
# a tiny clip_tiny of STEPS steps on the CPU, a loss logged at every step, nothing else
FIT = ["fit", "--recipe", "clip_tiny", *TINY, "--data.train_num_samples", "160", "--trainer.max_steps", str(STEPS),
       "--trainer.max_epochs", "-1", "--trainer.log_every_n_steps", "1", "--trainer.callbacks", "[]",
       "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
       "--trainer.accelerator", "cpu"]
# what a launcher or an earlier distributed run may have left in the environment
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE",
               "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED", "SLURM_NTASKS", "SLURM_JOB_ID")


def env(**extra: str) -> dict[str, str]:
    """This environment without launcher variables; one thread per process, no hub look-ups."""
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**clean, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(root: Path, version: int = 0) -> dict[int, float]:
    """Per-step training losses of the clip_tiny run logged under ``root``."""
    with open(root / "clip_tiny" / f"version_{version}" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def fit_two_processes(root: Path, *extra: str, strategy: str = "ddp", timeout: float = 400,
                      stdout: list[str] | None = None) -> dict[int, float]:
    """FIT on 2 CPU processes (Lightning's launcher) with ``strategy`` and ``extra`` arguments,
    logged under ``root``; its per-step losses (of this launch: a resumed run logs a new version).
    ``stdout``: a list to append the run's output to."""
    cmd = [sys.executable, "-m", "vlp.cli", *FIT, "--trainer.devices", "2", "--trainer.strategy", strategy, *extra,
           "--trainer.default_root_dir", str(root)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env())
    assert out.returncode == 0, out.stderr[-3000:]
    if stdout is not None:
        stdout.append(out.stdout)
    return losses(root, version=max(int(p.name.split("_")[1]) for p in (root / "clip_tiny").glob("version_*")))

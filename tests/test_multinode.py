"""Several nodes: two 'nodes' of one CPU process each on this machine (``--trainer.num_nodes 2
--trainer.devices 1``) give the per-step losses of one node with two processes.

Each node is one ``vlp fit`` process started as on a real cluster, in two ways:
``env``: Lightning's own launcher (LightningEnvironment) with ``MASTER_ADDR``, ``MASTER_PORT``
and ``NODE_RANK`` set, as Lightning documents for a general cluster; ``torchrun``: ``torchrun
--nnodes 2 --node_rank R --master_addr ... -m vlp.cli fit ...`` on every node
(TorchElasticEnvironment), the README's command."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
FIT = ["fit", "--recipe", "clip_tiny", *TINY, "--data.train_num_samples", "160", "--trainer.max_steps", str(STEPS),
       "--trainer.max_epochs", "-1", "--trainer.log_every_n_steps", "1", "--trainer.callbacks", "[]",
       "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
       "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]
# what a launcher or an earlier distributed run may have left in the environment
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE",
               "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED", "SLURM_NTASKS", "SLURM_JOB_ID")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(root: Path) -> dict[int, float]:
    with open(next(root.glob("clip_tiny/version_0/metrics.csv"))) as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def _run_together(cmds: list[tuple[list[str], dict[str, str]]], timeout: float = 600) -> None:
    """Start every command at once (the nodes meet at the rendezvous); if one fails, stop the
    others (they would wait for it) and report its output."""
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, env in cmds]
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        outputs = [p.communicate()[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"node {i} exited with {p.returncode}:\n{out[-3000:]}"


@pytest.fixture(scope="module")
def one_node_two_processes(tmp_path_factory) -> dict[int, float]:
    root = tmp_path_factory.mktemp("one_node")
    cmd = [sys.executable, "-m", "vlp.cli", *FIT, "--trainer.devices", "2", "--trainer.default_root_dir", str(root)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return _losses(root)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["env", "torchrun"])
def test_two_nodes_of_one_process_give_the_two_process_losses(launcher, one_node_two_processes, tmp_path):
    port = str(_free_port())
    cmds = []
    for node in (0, 1):
        # every node its own folder, as on machines without a shared file system: rank 0 logs
        args = [*FIT, "--trainer.num_nodes", "2", "--trainer.devices", "1",
                "--trainer.default_root_dir", str(tmp_path / f"node{node}")]
        if launcher == "env":
            cmds.append(([sys.executable, "-m", "vlp.cli", *args],
                         _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node))))
        else:
            cmds.append(([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                          "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", port,
                          "-m", "vlp.cli", *args], _env()))
    _run_together(cmds)
    two_nodes = _losses(tmp_path / "node0")
    assert sorted(two_nodes) == sorted(one_node_two_processes) == list(range(STEPS))
    for step, loss in one_node_two_processes.items():
        # the same ranks, data and collectives: the same numbers
        assert two_nodes[step] == pytest.approx(loss, rel=1e-6), (step, two_nodes[step], loss)

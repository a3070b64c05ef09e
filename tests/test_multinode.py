"""Several nodes: two 'nodes' of one CPU process each on this machine (``--trainer.num_nodes 2
--trainer.devices 1``) give the per-step losses of one node with two processes.

Each node is one ``vlp fit`` process started as on a real cluster, in two ways:
``env``: Lightning's own launcher (LightningEnvironment) with ``MASTER_ADDR``, ``MASTER_PORT``
and ``NODE_RANK`` set, as Lightning documents for a general cluster; ``torchrun``: ``torchrun
--nnodes 2 --node_rank R --master_addr ... -m vlp.cli fit ...`` on every node
(TorchElasticEnvironment), the README's command."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests import processes as proc
from tests.processes import FIT, ROOT, STEPS

FIT = [*FIT, "--trainer.strategy", "ddp"]


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
    return proc.fit_two_processes(tmp_path_factory.mktemp("one_node"), timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["env", "torchrun"])
def test_two_nodes_of_one_process_give_the_two_process_losses(launcher, one_node_two_processes, tmp_path):
    port = str(proc.free_port())
    cmds = []
    for node in (0, 1):
        # every node its own folder, as on machines without a shared file system: rank 0 logs
        args = [*FIT, "--trainer.num_nodes", "2", "--trainer.devices", "1",
                "--trainer.default_root_dir", str(tmp_path / f"node{node}")]
        if launcher == "env":
            cmds.append(([sys.executable, "-m", "vlp.cli", *args],
                         proc.env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node))))
        else:
            cmds.append(([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                          "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", port,
                          "-m", "vlp.cli", *args], proc.env()))
    _run_together(cmds)
    two_nodes = proc.losses(tmp_path / "node0")
    assert sorted(two_nodes) == sorted(one_node_two_processes) == list(range(STEPS))
    for step, loss in one_node_two_processes.items():
        # the same ranks, data and collectives: the same numbers
        assert two_nodes[step] == pytest.approx(loss, rel=1e-6), (step, two_nodes[step], loss)

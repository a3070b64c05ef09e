"""``vlp fit --recipe flip_vit_l`` itself on CPUs: DeepSpeed ZeRO-2 (the recipe's
``vlp_deepspeed_stage_2``) and the recipe's bf16-mixed precision, 2 gloo processes started by
Lightning, FLIP masking, the built-in emoji shards (the recipe's default data), towers shrunk.

The full-size model (ViT-L/16 + 12 x 768, one step at batch 2 on 2 CPU processes, peak memory
per process) is benchmarks/flip_vit_l_cpu.py."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch import Callback

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


class Probe(Callback):
    """Writes what the run ran with, per rank: strategy, ZeRO stage, precision, the DeepSpeed
    optimiser, the image tower's mask ratio, whether the parameters moved."""

    def __init__(self, out: str):
        self.out = out
        self.facts: dict = {}

    def on_train_start(self, trainer, pl_module):
        strategy = trainer.strategy
        config = getattr(strategy, "config", None) or {}
        optimizer = getattr(strategy.model, "optimizer", None)  # the DeepSpeed engine's
        self.first = {n: p.detach().float().clone() for n, p in pl_module.named_parameters()}
        self.facts.update(
            strategy=f"{type(strategy).__module__}.{type(strategy).__name__}",
            zero_stage=config.get("zero_optimization", {}).get("stage"),
            bf16=bool(config.get("bf16", {}).get("enabled")),
            precision=str(trainer.precision),
            world_size=trainer.world_size,
            accelerator=type(trainer.accelerator).__name__,
            optimizer=type(optimizer).__name__,
            mask_ratio=pl_module.towers["image"].mask_ratio,
            param_dtypes=sorted({str(p.dtype) for p in pl_module.parameters()}),
        )

    def on_train_end(self, trainer, pl_module):
        moved = [n for n, p in pl_module.named_parameters() if not (p.detach().float() == self.first[n]).all()]
        self.facts.update(global_step=trainer.global_step, params=len(self.first), moved=len(moved))
        Path(self.out).mkdir(parents=True, exist_ok=True)
        with open(Path(self.out) / f"rank{trainer.global_rank}.json", "w") as f:
            json.dump(self.facts, f)


@pytest.mark.slow
def test_flip_vit_l_fits_on_two_cpu_processes_under_zero2(tmp_path):  # ~25 s on 2 cores
    pytest.importorskip("deepspeed")  # pip install -e '.[deepspeed]'
    probe = f"{{class_path: tests.test_flip_vit_l.Probe, init_args: {{out: '{tmp_path / 'facts'}'}}}}"
    callbacks = f"[{{class_path: vlp.callbacks.UnmaskedTuning, init_args: {{start_fraction: 0.95}}}}, {probe}]"
    cmd = [sys.executable, "-m", "vlp.cli", "fit", "--recipe", "flip_vit_l", *TINY,
           # TINY's ViT without the recipe's pre-norm; put it back
           "--model.towers.image.model_kwargs", "{patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2, pre_norm: true}",
           "--model.optim.warmup_steps", "1",  # steps that move bf16 weights (the recipe warms up 782 steps)
           "--data.train_num_samples", "160", "--trainer.max_steps", str(STEPS), "--trainer.max_epochs", "-1",
           "--trainer.log_every_n_steps", "1", "--trainer.callbacks", callbacks,
           "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.default_root_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-4000:]

    for rank in (0, 1):
        facts = json.loads((tmp_path / "facts" / f"rank{rank}.json").read_text())
        assert facts["strategy"] == "vlp.strategies.DeepSpeedStrategy" and facts["zero_stage"] == 2, facts
        assert facts["accelerator"] == "CPUAccelerator" and facts["world_size"] == 2
        assert facts["precision"] == "bf16-mixed" and facts["bf16"], facts  # the recipe's precision, on CPU
        assert facts["optimizer"] == "DeepSpeedZeroOptimizer", facts  # ZeRO-2 partitions states and gradients
        assert facts["mask_ratio"] == 0.5  # FLIP
        # bf16 weights: the updates of the larger ones (norms at 1.0) are below their resolution
        assert facts["global_step"] == STEPS and facts["moved"] > facts["params"] // 2, facts
    with open(next(tmp_path.glob("flip_vit_l/version_0/metrics.csv"))) as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), losses

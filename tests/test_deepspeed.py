"""DeepSpeed ZeRO 1-3 (vlp.strategies.DeepSpeedStrategy) and FSDP2 on CPUs (2 gloo processes):
the same losses as DDP for CLIP, SigLIP and CoCa, gradient clipping (DeepSpeed: through its
config), a clamped logit scale, a non-finite loss that skips its step, and the end-of-run
evaluation with sharded parameters equal to one process's on the same weights.

The slow test runs this file as a script under ``torch.distributed.run`` (2 processes, one
``vlp fit`` after another in the same processes): one subprocess for every run."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5
NAN_BATCH = 2  # CLIP's runs: rank 1's images are NaN in this batch (its loss is not finite)
CLIP = 0.5  # trainer.gradient_clip_val of every run: below the tiny towers' gradient norms
STRATEGIES = {
    "ddp": "ddp",
    "zero1": "vlp_deepspeed_stage_1",
    "zero2": "vlp_deepspeed_stage_2",
    "zero2_offload": "vlp_deepspeed_stage_2_offload",  # optimiser states and step on the CPU
    # every parameter sharded (ZeRO-3 keeps tensors under 100k elements whole by default)
    "zero3": "{class_path: vlp.strategies.DeepSpeedStrategy, init_args: {stage: 3, param_persistence_threshold: 0}}",
    "fsdp2": "{class_path: lightning.pytorch.strategies.ModelParallelStrategy, "
             "init_args: {data_parallel_size: 2, tensor_parallel_size: 1}}",
}
EVAL_TASK = "emoji_twitter_test_retrieval"  # evaluated at the end of the sharded CLIP runs
RECIPES = {  # recipe -> extra options; ZeRO-1 and ZeRO-2 offload run CLIP only
    "clip_tiny": [],
    # the logit scale starts above its clamp (ln 100 = 4.605): the forward must use ln 100
    "siglip_tiny": ["--model.objectives", "[{class_path: vlp.objectives.SigmoidLoss, "
                    "init_args: {init_logit_scale: 5.0}}]"],
    "coca_tiny": [],
}


def _full(module) -> dict[str, torch.Tensor]:
    """Every parameter whole, on every rank (ZeRO-3, FSDP2: gathered, a collective)."""
    params = dict(module.named_parameters())
    if any(hasattr(p, "full_tensor") for p in params.values()):  # FSDP2's DTensors
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in params.items()}
    if any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().clone() for n, p in params.items()}
    return {n: p.detach().clone() for n, p in params.items()}


class Probe(Callback):
    """Poisons rank 1's batch ``nan_batch`` and records whether that step and the next changed
    the parameters, the gradient norms DeepSpeed clipped, and the final logit scales."""

    def __init__(self, out: str, nan_batch: int = -1):
        self.out, self.nan_batch = out, nan_batch
        self.facts: dict = {"grad_norms": []}
        self._before: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.nan_batch:
            self._before = _full(pl_module)
            if trainer.global_rank == 1:
                batch["image"].fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        engine = trainer.strategy.model
        if hasattr(engine, "get_global_grad_norm"):
            norm = engine.get_global_grad_norm()
            self.facts["grad_norms"].append(None if norm is None else float(norm))
        if self.nan_batch >= 0 and batch_idx in (self.nan_batch, self.nan_batch + 1):
            now = _full(pl_module)
            key = "changed_in_nan_step" if batch_idx == self.nan_batch else "changed_after"
            self.facts[key] = any(not torch.equal(now[n], self._before[n]) for n in now)
            self._before = now

    def on_train_end(self, trainer, pl_module):
        full = _full(pl_module)
        self.facts["logit_scale"] = {n: v.tolist() for n, v in full.items() if n.endswith("logit_scale")}
        self.facts["nonfinite_skipped"] = pl_module.nonfinite_skipped
        self.facts["gradient_clipping"] = (getattr(trainer.strategy, "config", None) or {}).get("gradient_clipping")
        Path(self.out).mkdir(parents=True, exist_ok=True)
        if trainer.global_rank == 0:  # the trained weights, for the one-process evaluation
            torch.save(full, Path(self.out) / "weights.pt")
        with open(Path(self.out) / f"rank{trainer.global_rank}.json", "w") as f:
            json.dump(self.facts, f)


def _runs():
    for name in STRATEGIES:
        for recipe in RECIPES:
            if name not in ("zero1", "zero2_offload") or recipe == "clip_tiny":
                yield name, recipe


def _main(out: Path) -> None:
    from tests.conftest import TINY
    from vlp.cli import run_cli

    for name, recipe in _runs():
        where = out / name / recipe
        nan_batch = NAN_BATCH if recipe == "clip_tiny" else -1
        probe = (f"{{class_path: tests.test_deepspeed.Probe, init_args: {{out: '{where}', "
                 f"nan_batch: {nan_batch}}}}}")
        evaluate = (f", {{class_path: vlp.callbacks.EvalTasks, init_args: {{tasks: [{EVAL_TASK}], batch_size: 64}}}}"
                    if recipe == "clip_tiny" and name in ("ddp", "zero3", "fsdp2") else "")
        callbacks = f"[{probe}{evaluate}]"
        run_cli(["fit", "--recipe", recipe, *TINY, *RECIPES[recipe],
                 "--data.train_num_samples", "160", "--trainer.max_steps", str(STEPS), "--trainer.max_epochs", "-1",
                 "--trainer.log_every_n_steps", "1", "--trainer.callbacks", callbacks,
                 "--trainer.gradient_clip_val", str(CLIP), "--trainer.enable_checkpointing", "false",
                 "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                 "--trainer.strategy", STRATEGIES[name], "--trainer.logger.init_args.save_dir", str(where)])
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown (gloo's threads, see vlp.cli._leave_distributed)


def _metrics(where: Path) -> list[dict]:
    with open(next(where.glob("*/version_0/metrics.csv"))) as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def test_vlp_deepspeed_names_are_registered_and_start_on_cpu():
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import StrategyRegistry

    from vlp.strategies import DeepSpeedStrategy

    for name, stage in (("vlp_deepspeed_stage_1", 1), ("vlp_deepspeed_stage_2", 2), ("vlp_deepspeed_stage_3", 3),
                        ("vlp_deepspeed_stage_2_offload", 2), ("vlp_deepspeed_stage_3_offload", 3)):
        assert StrategyRegistry[name]["strategy"] is DeepSpeedStrategy
        trainer = Trainer(accelerator="cpu", devices=1, strategy=name, logger=False, enable_checkpointing=False)
        assert isinstance(trainer.strategy, DeepSpeedStrategy)
        assert trainer.strategy.config["zero_optimization"]["stage"] == stage
        assert trainer.strategy.root_device == torch.device("cpu")
    three = DeepSpeedStrategy(stage=3, param_persistence_threshold=0)
    assert three.config["zero_optimization"]["stage3_param_persistence_threshold"] == 0


@pytest.mark.slow
def test_zero_1_2_3_and_fsdp2_give_the_ddp_losses_clip_skip_a_nonfinite_step_and_evaluate(tmp_path):
    from tests.processes import env, free_port  # not at the top: the ranks run this file

    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(Path(__file__)), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env())
    assert done.returncode == 0, done.stderr[-4000:]

    for name, recipe in _runs():
        where = out / name / recipe
        rows = _metrics(where)
        assert [int(r["step"]) for r in rows] == list(range(STEPS)), (name, recipe)
        facts = [json.loads((where / f"rank{r}.json").read_text()) for r in (0, 1)]
        if name == "ddp":
            continue
        ddp = _metrics(out / "ddp" / recipe)
        for mine, ref in zip(rows, ddp):
            a, b = float(mine["train/loss"]), float(ref["train/loss"])
            # float32 sums in another order (bucketed all-reduce vs reduce-scatter, DeepSpeed's
            # flat partitions and its global norm for the clipping), compounded over 5 AdamW
            # steps: measured up to 3.1e-7 relative (SigLIP, ZeRO-2, step 3); 1e-5 leaves margin
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6, nan_ok=True), (name, recipe, mine["step"], a, b)
        deepspeed = name.startswith("zero")
        for fact in facts:
            if deepspeed:
                assert fact["gradient_clipping"] == CLIP  # trainer.gradient_clip_val -> DeepSpeed's config
                # the norms DeepSpeed measured before clipping: clipping was active (and matched DDP)
                assert any(n is not None and n > CLIP for n in fact["grad_norms"]), fact["grad_norms"]
        if recipe == "siglip_tiny":
            assert all(float(r["train/sigmoid_logit_scale"]) == pytest.approx(100.0) for r in rows)
            for fact in facts:  # the clamp passes no gradient: the master weight stays where it began
                assert fact["logit_scale"]["objectives.0.logit_scale"] == pytest.approx([5.0])
        if recipe == "clip_tiny":
            for fact in facts:
                assert fact["changed_in_nan_step"] is False and fact["changed_after"] is True, (name, fact)
                assert fact["nonfinite_skipped"] == 1
                if deepspeed:
                    assert fact["grad_norms"][NAN_BATCH] == math.inf  # DeepSpeed's overflow: step skipped
            assert float(rows[-1]["train/nonfinite_skipped"]) == 1.0
    for rank in (0, 1):  # DDP skipped the same step (the losses after it agree too)
        ddp_facts = json.loads((out / "ddp" / "clip_tiny" / f"rank{rank}.json").read_text())
        assert ddp_facts["changed_in_nan_step"] is False and ddp_facts["changed_after"] is True
        assert ddp_facts["nonfinite_skipped"] == 1
    _check_sharded_evaluation(out)


def _check_sharded_evaluation(out: Path) -> None:
    """The EvalTasks numbers of the sharded runs (each rank embeds its share with sharded
    parameters) equal one process's evaluation of the same trained weights."""
    from tests.conftest import TINY
    from vlp.cli import run_cli
    from vlp.eval.tasks import load_task

    cli = run_cli(["--recipe", "clip_tiny", *TINY, "--trainer.logger", "false"], run=False)
    module, data = cli.model.eval(), cli.datamodule
    for name in ("ddp", "zero3", "fsdp2"):
        where = out / name / "clip_tiny"
        loaded = module.load_state_dict(torch.load(where / "weights.pt"), strict=False)
        params = {n for n, _ in module.named_parameters()}
        assert not loaded.unexpected_keys and not params & set(loaded.missing_keys), name
        single = load_task(EVAL_TASK).run(module, data.eval_data(0), batch_size=64)["metrics"]
        sharded = json.loads(next(where.glob("*/version_0/eval.json")).read_text())
        result = next(r for r in sharded["results"] if r["task"] == EVAL_TASK)
        assert result["num_samples"] == 385
        assert result["metrics"] == pytest.approx(single, abs=1e-6), name


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _main(Path(sys.argv[1]))

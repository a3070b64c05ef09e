"""Strategy glue: how parameters are sharded, applied to an untouched model from outside.

``shard_fsdp2`` is what ``VLPModule.configure_model`` calls under Lightning's
``ModelParallelStrategy`` (FSDP2, ``fully_shard``): every block a tower lists in
``shard_units()`` becomes its own FSDP unit (gathered just before it runs, freed after), then
each tower and each objective becomes one for its remaining parameters. The model code never
branches on the strategy; it calls its blocks through their normal ``__call__`` so that the
units' hooks run (vlp.towers.pooled).

``DeepSpeedStrategy`` is Lightning's DeepSpeed (ZeRO 1-3) that also runs on CPUs, registered as
``vlp_deepspeed_stage_1`` ... ``vlp_deepspeed_stage_3_offload`` when this module is imported.
"""

from __future__ import annotations

import torch
from torch import nn


def shard_fsdp2(towers: nn.ModuleDict, objectives: nn.ModuleList, mesh) -> None:
    """Apply ``fully_shard`` over ``mesh``: tower blocks, then towers, then objectives.

    Every parameter ends up in exactly one unit (FSDP2 all-reduces only what it shards)."""
    from torch.distributed.fsdp import fully_shard

    for tower in towers.values():
        units = tower.shard_units() if callable(getattr(tower, "shard_units", None)) else []
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(tower, mesh=mesh)
    for objective in objectives:
        if any(True for _ in objective.parameters()):
            fully_shard(objective, mesh=mesh)


def data_parallel_mesh(device_mesh):
    """The data-parallel dimension of Lightning's ModelParallelStrategy mesh (the whole mesh
    when it has a single dimension)."""
    names = getattr(device_mesh, "mesh_dim_names", None) or ()
    return device_mesh["data_parallel"] if "data_parallel" in names else device_mesh


def replicates_parameters(strategy) -> bool:
    """Whether every rank holds the whole model (one device, DDP): a forward on one rank alone
    (Lightning's model summary counting FLOPs) is then no collective."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
    from lightning.pytorch.strategies import DeepSpeedStrategy as AnyDeepSpeed

    return isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(strategy, AnyDeepSpeed)


def gradients_on_parameters(strategy) -> bool:
    """Whether the strategy keeps gradients on the parameters' ``.grad`` (all but DeepSpeed, whose
    ZeRO optimiser holds them in its own buffers and skips non-finite steps itself)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy as AnyDeepSpeed

    return not isinstance(strategy, AnyDeepSpeed)


def engine_skipped_steps(strategy) -> int | None:
    """DeepSpeed: its engine's count of optimiser steps it skipped (gradient norm not finite);
    None under other strategies."""
    skipped = getattr(getattr(strategy, "model", None), "skipped_steps", None)
    return skipped if isinstance(skipped, int) and not gradients_on_parameters(strategy) else None


# ---- DeepSpeed ZeRO 1-3 (Lightning's DeepSpeedStrategy, also on CPU)

from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeedStrategy  # noqa: E402
from lightning.pytorch.strategies import StrategyRegistry  # noqa: E402


class DeepSpeedStrategy(_LightningDeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy (ZeRO stage 1, 2 or 3), which also runs on a CPU accelerator.

    On CUDA GPUs it is Lightning's strategy. On a CPU accelerator it skips Lightning's
    CUDA-only guard and its device-index check (every process's root device is ``cpu``), and
    the process group is gloo (Lightning's default for a CPU root device); DeepSpeed then runs
    on its CPU accelerator: a test or a small run of ZeRO on a machine without GPUs
    (``--trainer.accelerator cpu --trainer.devices 2``). The optimiser is the module's torch
    AdamW (vlp.optim), which DeepSpeed wraps in its ZeRO optimiser (no DeepSpeed op to build).

    Names (registered in Lightning's StrategyRegistry when vlp.strategies is imported, which
    `vlp fit` (vlp.fit_cli) does, so recipes, the command line and ``Trainer(strategy=...)`` after
    importing vlp.strategies know them): ``vlp_deepspeed`` (stage 2), ``vlp_deepspeed_stage_1``,
    ``vlp_deepspeed_stage_2``, ``vlp_deepspeed_stage_2_offload``, ``vlp_deepspeed_stage_3``,
    ``vlp_deepspeed_stage_3_offload`` (the CPU-offload variants keep the optimiser states on
    the CPU and step there: with parameters on GPUs through DeepSpeed's CPU Adam, which DeepSpeed
    JIT-builds on first use; on a CPU accelerator through torch's AdamW, tested against DDP). With init args:
    ``{class_path: vlp.strategies.DeepSpeedStrategy, init_args: {stage: 3}}``.

    Args (besides Lightning's):
        param_persistence_threshold: ZeRO-3's ``stage3_param_persistence_threshold``: parameters
            with fewer elements stay whole on every rank (DeepSpeed's default 100k; 0 shards
            every parameter, as the tests do with their tiny towers). None: DeepSpeed's default.

    Gradient clipping: ``trainer.gradient_clip_val`` becomes DeepSpeed's ``gradient_clipping``
    (by norm, as Lightning does; clipping by value is refused). Non-finite steps: vlp's step
    (vlp.step.PlainStep) hands DeepSpeed a loss whose gradients are all NaN when the loss is not
    finite on some rank, and DeepSpeed's ZeRO optimiser skips a step whose gradient norm is
    not finite (no update, optimiser state untouched); the step counts the skips
    (vlp.step.NonFiniteGuard). ZeRO-3: towers return a TowerOutput (a dataclass), which
    DeepSpeed's hooks do not look into; ``hook_dataclass_outputs`` gives its tensors the hook
    that gathers the module's parameters again for the backward. The micro-batch size DeepSpeed logs with is the datamodule's
    ``batch_size`` (Lightning's guess reads a batch sampler that vlp's loaders do not have).
    """

    def __init__(self, *args, param_persistence_threshold: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        zero = (self.config or {}).get("zero_optimization")
        if param_persistence_threshold is not None and isinstance(zero, dict):
            zero["stage3_param_persistence_threshold"] = int(param_persistence_threshold)
        if self.offloads_optimizer():
            # vlp chooses the optimiser itself (VLPModule.configure_optimizers): DeepSpeed's CPU
            # Adam when the parameters live on GPUs, torch's AdamW when they are on the CPU anyway
            self.config.setdefault("zero_force_ds_cpu_optimizer", False)

    def offloads_optimizer(self) -> bool:
        """Whether ZeRO keeps the optimiser states (and steps) on the CPU (the _offload names)."""
        zero = (self.config or {}).get("zero_optimization") or {}
        device = (zero.get("offload_optimizer") or {}).get("device") if isinstance(zero, dict) else None
        return device in ("cpu", "nvme")

    def _on_cpu(self) -> bool:
        from lightning.pytorch.accelerators import CPUAccelerator

        return isinstance(self.accelerator, CPUAccelerator)

    def setup_environment(self) -> None:
        if not self._on_cpu():
            return super().setup_environment()  # Lightning's: CUDA, or its error
        # Lightning's DeepSpeedStrategy refuses anything but CUDA here; the rest is DDP's
        super(_LightningDeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        # Lightning's, without _validate_device_index_selection (CPU devices have no index)
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        engine, deepspeed_optimizer = self._initialize_engine(model, optimizer, lr_scheduler)
        if self.zero_stage_3:
            hook_dataclass_outputs(engine.module)
        return engine, deepspeed_optimizer

    def _initialize_engine(self, model, optimizer, lr_scheduler):
        if not self._on_cpu():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        import argparse

        import deepspeed

        # Lightning's, with the local rank as DeepSpeed's device rank (a CPU device has no index)
        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer

    def _auto_select_batch_size(self) -> int:
        module = self.lightning_module
        datamodule = getattr(module.trainer, "datamodule", None) if module is not None else None
        size = getattr(datamodule, "batch_size", None)
        if isinstance(size, int) and size > 0:
            return size
        try:
            return super()._auto_select_batch_size()
        except AttributeError:  # a loader without a batch sampler (batch_size=None)
            return 1

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        names = {
            "vlp_deepspeed": ("DeepSpeed ZeRO stage 2 (vlp: GPUs or CPUs)", dict(stage=2)),
            "vlp_deepspeed_stage_1": ("DeepSpeed ZeRO stage 1 (vlp: GPUs or CPUs)", dict(stage=1)),
            "vlp_deepspeed_stage_2": ("DeepSpeed ZeRO stage 2 (vlp: GPUs or CPUs)", dict(stage=2)),
            "vlp_deepspeed_stage_2_offload": ("DeepSpeed ZeRO stage 2 and CPU offload (vlp)",
                                              dict(stage=2, offload_optimizer=True)),
            "vlp_deepspeed_stage_3": ("DeepSpeed ZeRO stage 3 (vlp: GPUs or CPUs)", dict(stage=3)),
            "vlp_deepspeed_stage_3_offload": ("DeepSpeed ZeRO stage 3 and CPU offload (vlp)",
                                              dict(stage=3, offload_optimizer=True, offload_parameters=True)),
        }
        for name, (description, kwargs) in names.items():
            if name not in strategy_registry:
                strategy_registry.register(name, cls, description=description, **kwargs)


DeepSpeedStrategy.register_strategies(StrategyRegistry)


def hook_dataclass_outputs(model) -> None:
    """ZeRO-3 frees a module's parameters after its forward and gathers them again before its
    backward through an autograd function that it applies to the module's output tensors; it
    finds those in tensors, lists, tuples and dicts only. For a module that returns a dataclass
    (vlp's TowerOutput) the backward would read the freed (empty) parameters. A forward hook,
    after DeepSpeed's, applies the same function to the dataclass's tensors that need
    gradients."""
    import dataclasses

    def hook(module, inputs, output):
        if not dataclasses.is_dataclass(output) or isinstance(output, type):
            return None
        wrap = getattr(module, "pre_bwd_fn", None)  # DeepSpeed's PreBackwardFunctionForModule
        if wrap is None:
            return None
        changed = {f.name: wrap.apply(v) for f in dataclasses.fields(output)
                   if torch.is_tensor(v := getattr(output, f.name)) and v.requires_grad}
        return dataclasses.replace(output, **changed) if changed else None

    for module in model.modules():
        if getattr(module, "pre_bwd_fn", None) is not None:
            module.register_forward_hook(hook)

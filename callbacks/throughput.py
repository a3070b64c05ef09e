"""Training throughput: samples/s, text tokens/s and (on GPUs) model FLOPs utilisation.

Lightning does the arithmetic (``Throughput``: rates, MFU; ``measure_flops``; its table of
peak FLOPs); vlp adds what it lacks: caption tokens counted with the tokenizer's pad id, and
the FLOPs of a training step (towers and objectives, forward and backward) counted once, on
the first batch's shapes, with a meta-device copy of the module.
"""

from __future__ import annotations

import copy
import time

import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops, measure_flops
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

from vlp.errors import VLPError
from vlp.module import FieldView


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on the meta device (shapes only:
    no memory, no compute, and nothing of the original is touched), with the towers' activation
    checkpointing off (its recomputation is not model FLOPs)."""
    memo: dict[int, torch.Tensor] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    meta = copy.deepcopy(module, memo)  # a LightningModule's copy drops its trainer (__getstate__)
    for part in meta.modules():  # model FLOPs: without the towers' activation recomputation
        if getattr(part, "grad_checkpointing", False) and callable(getattr(part, "set_grad_checkpointing", None)):
            part.set_grad_checkpointing(False)
    return meta


def training_flops(module: nn.Module, batch: dict) -> int:
    """Forward + backward FLOPs of a training step on ``batch``: ``module(batch) -> {name:
    TowerOutput}``, the weighted sum of ``module.objectives``, and its backward (frozen
    parameters get no weight gradient, as in training), counted by Lightning's
    ``measure_flops`` (torch's FlopCounterMode). Give a meta-device module (meta_copy): the
    batch is moved there, so nothing is computed, no RNG is drawn and no gradient is left."""
    batch = apply_to_collection(batch, torch.Tensor, lambda t: t.to("meta"))

    def loss(outputs: dict) -> torch.Tensor:
        view = FieldView(batch, module.inputs)
        return sum(o.weight * o(outputs, view)[0] for o in module.objectives)

    return measure_flops(module, lambda: module(batch), loss)


class ThroughputMonitor(Callback):
    """Logs, every ``log_every_n_steps`` steps, over the steps since the last log:

    - ``throughput/samples_per_s``: image-text pairs per second, all ranks;
    - ``throughput/text_tokens_per_s``: non-padding caption tokens per second, all ranks (the pad
      id is the one of the datamodule's tokenizer, ``tokenizer.spec``; not logged when the captions
      are rendered as images, CLIPPO's ``data.text_renderer``);
    - ``throughput/step_s``: seconds per step;
    - ``throughput/flops_per_sample``: forward + backward FLOPs of the towers and objectives per
      pair (training_flops on the first batch's shapes, divided by its size; a full batch
      because batch-norm layers refuse a batch of one in training mode);
    - ``throughput/mfu``: model FLOPs utilisation, achieved FLOP/s over the device's peak for the
      run's precision (Lightning's table of GPUs; ``peak_flops`` overrides it). Not on CPUs
      unless ``peak_flops`` is given.

    The first ``warmup_steps`` steps are left out (start-up, compilation, cache warm-up).
    """

    def __init__(self, log_every_n_steps: int = 10, warmup_steps: int = 3, peak_flops: float | None = None):
        self.log_every_n_steps = log_every_n_steps
        self.warmup_steps = warmup_steps
        self.peak_flops = peak_flops
        self.pad_id: int | None = None  # the tokenizer's, read in setup
        self._count_tokens = True  # False when the captions are rendered (no tokens)
        self.flops_per_sample: float | None = None
        self._meta_module: nn.Module | None = None  # copied at setup, counted on the first batch
        self._throughput: Throughput | None = None
        self._start: float | None = None
        self._batches = self._samples = self._since_log = 0
        self._tokens: torch.Tensor | int = 0  # summed on the device, read at a log (no sync per step)
        self.last: dict[str, float] = {}

    def _peak(self, trainer) -> float | None:
        if self.peak_flops is not None:
            return float(self.peak_flops)
        precision = str(trainer.precision)
        dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
        return get_available_flops(trainer.strategy.root_device, dtype)

    def setup(self, trainer, pl_module, stage: str) -> None:
        spec = getattr(getattr(trainer.datamodule, "tokenizer", None), "spec", None)
        self._count_tokens = getattr(trainer.datamodule, "text_renderer", None) is None
        if spec is None and self._count_tokens:
            raise VLPError("ThroughputMonitor counts text tokens with the tokenizer's pad id, but the datamodule "
                           "has no tokenizer with a spec (vlp.data.text_spec.TextSpec)")
        self.pad_id = spec.pad_id if spec is not None else None
        if stage != "fit":
            return
        # copied before the strategy moves, wraps or shards the module; in the dtype of the
        # batches (the precision plugin converts both)
        self._meta_module = trainer.precision_plugin.convert_module(meta_copy(pl_module))
        # a window of two updates: the rates are those between the last two logs
        self._throughput = Throughput(available_flops=self._peak(trainer), world_size=trainer.world_size,
                                      window_size=2)

    def _clock(self, trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)  # the steps' kernels have finished
        return time.perf_counter()

    def _restart(self, trainer) -> None:
        self._start = self._clock(trainer)
        self._batches = self._samples = self._since_log = self._tokens = 0
        self._throughput.reset()
        self._throughput.update(time=0.0, batches=0, samples=0, lengths=0, flops=0 if self.flops_per_sample else None)

    def on_train_start(self, trainer, pl_module) -> None:
        self._restart(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._meta_module is None:
            return
        try:
            self.flops_per_sample = training_flops(self._meta_module, batch) / batch["image"].shape[0]
        except (RuntimeError, NotImplementedError) as e:  # meta tensors have shapes, no values
            rank_zero_warn(f"ThroughputMonitor logs no flops_per_sample or mfu: the model does not run on the meta "
                           f"device, where FLOPs are counted (a tower that reads tensor values, as transformers' "
                           f"attention masks do): {e}")
        self._meta_module = None
        self._restart(trainer)  # the count's time is no step's

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step <= self.warmup_steps:  # the window starts after the last warm-up step
            self._restart(trainer)
            return
        samples = batch["image"].shape[0]
        self._batches += 1
        self._samples += samples
        self._since_log += samples
        if self._count_tokens:
            self._tokens = self._tokens + (batch["text"] != self.pad_id).sum()
        if self._batches % self.log_every_n_steps:
            return
        tokens = int(self._tokens) if self._count_tokens else None
        flops = self.flops_per_sample * self._since_log if self.flops_per_sample else None
        self._throughput.update(time=self._clock(trainer) - self._start, batches=self._batches,
                                samples=self._samples, lengths=tokens, flops=flops)
        self._since_log = 0
        rates, world = self._throughput.compute(), trainer.world_size
        metrics = {"throughput/samples_per_s": rates["device/samples_per_sec"] * world,
                   "throughput/step_s": 1 / rates["device/batches_per_sec"]}
        if "device/items_per_sec" in rates:
            metrics["throughput/text_tokens_per_s"] = rates["device/items_per_sec"] * world
        if self.flops_per_sample:
            metrics["throughput/flops_per_sample"] = self.flops_per_sample
            if "device/mfu" in rates:
                metrics["throughput/mfu"] = rates["device/mfu"]
        self.last = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

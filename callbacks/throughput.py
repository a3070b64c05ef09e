"""Training throughput: samples/s, text tokens/s and (on GPUs) model FLOPs utilisation."""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback
from torch.utils.flop_counter import FlopCounterMode

from vlp.errors import VLPError


class ThroughputMonitor(Callback):
    """Logs, every ``log_every_n_steps`` optimiser steps, over the steps since the last log:

    - ``throughput/samples_per_s``: image-text pairs per second, all ranks;
    - ``throughput/text_tokens_per_s``: non-padding caption tokens per second, all ranks (the pad
      id is the one of the datamodule's tokenizer, ``tokenizer.spec``);
    - ``throughput/step_s``: seconds per step;
    - ``throughput/flops_per_sample``: forward + backward FLOPs of the towers and objectives per
      pair, counted once with torch's FlopCounterMode on the first measured step;
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
        self.flops_per_step: int | None = None
        self.samples_per_step: int | None = None
        self._counter: FlopCounterMode | None = None
        self._window_start: float | None = None
        self._samples = self._tokens = self._steps = 0
        self.last: dict[str, float] = {}

    def _peak(self, trainer) -> float | None:
        if self.peak_flops is not None:
            return float(self.peak_flops)
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return None
        from lightning.fabric.utilities.throughput import get_available_flops

        precision = str(trainer.precision)
        dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
        return get_available_flops(device, dtype)

    def setup(self, trainer, pl_module, stage: str) -> None:
        spec = getattr(getattr(trainer.datamodule, "tokenizer", None), "spec", None)
        if spec is None:
            raise VLPError("ThroughputMonitor counts text tokens with the tokenizer's pad id, but the datamodule "
                           "has no tokenizer with a spec (vlp.data.text_spec.TextSpec)")
        self.pad_id = spec.pad_id

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.flops_per_step is None and trainer.global_step == self.warmup_steps and self._counter is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_step = self._counter.get_total_flops()
            self.samples_per_step = batch["image"].shape[0]
            self._counter = None
        step = trainer.global_step
        if step <= self.warmup_steps:
            self._window_start = time.perf_counter()
            return
        self._samples += batch["image"].shape[0] * trainer.world_size
        self._tokens += int((batch["text"] != self.pad_id).sum()) * trainer.world_size
        self._steps += 1
        if self._steps < self.log_every_n_steps:
            return
        seconds = time.perf_counter() - self._window_start
        metrics = {"throughput/samples_per_s": self._samples / seconds,
                   "throughput/text_tokens_per_s": self._tokens / seconds,
                   "throughput/step_s": seconds / self._steps}
        if self.flops_per_step:
            per_sample = self.flops_per_step / self.samples_per_step
            metrics["throughput/flops_per_sample"] = per_sample
            peak = self._peak(trainer)
            if peak:
                metrics["throughput/mfu"] = per_sample * self._samples / seconds / (peak * trainer.world_size)
        self.last = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self._window_start, self._samples, self._tokens, self._steps = time.perf_counter(), 0, 0, 0

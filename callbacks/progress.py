"""Progress as plain lines, for runs without a terminal (nohup, SLURM, a pipe)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Literal

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.data import extract_batch_size


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def default_every_n_steps(total_steps: float) -> int:
    """About every 5% of the run, at most every 50 steps, at least every step."""
    return max(1, min(50, int(total_steps) // 20)) if math.isfinite(total_steps) else 50


class ProgressLog(Callback):
    """Every ``every_n_steps`` optimiser steps (and at the last step), one flushed line on
    stdout, rank 0 only::

        step 40/190  epoch 0/14  loss 3.912  samples/s 412.3  elapsed 0:00:12  eta 0:00:45

    - ``loss``: mean training loss over the batches since the last line (rank 0's);
    - ``samples/s``: samples of every rank (batch size x world size) over the wall-clock
      time since the last line;
    - ``eta``: the remaining steps at the average rate of this run so far (a resumed run
      counts from its resume step).

    Args:
        every_n_steps: steps between lines; None = about every 5% of the run, at most 50,
            at least 1.
        when: ``no_tty`` = only when stdout is not a terminal (where a progress bar shows
            nothing until the end); ``always``; ``never``.

    `vlp fit` adds one (``no_tty``) when the recipe lists none, and then turns Lightning's
    default progress bar off when stdout is not a terminal.
    """

    def __init__(self, every_n_steps: int | None = None, when: Literal["no_tty", "always", "never"] = "no_tty"):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"ProgressLog needs every_n_steps >= 1, got {every_n_steps}")
        if when not in ("no_tty", "always", "never"):
            raise ValueError(f"ProgressLog.when must be no_tty, always or never, got {when!r}")
        self.every_n_steps = every_n_steps
        self.when = when
        self._n = every_n_steps or 1
        self._total: float = math.inf
        self._active = False
        self._reset_window()

    def enabled(self) -> bool:
        """Whether this process would print (stdout is judged now)."""
        if self.when == "never":
            return False
        return self.when == "always" or not sys.stdout.isatty()

    def _reset_window(self) -> None:
        self._window_start = time.perf_counter()
        self._loss_sum: torch.Tensor | None = None
        self._batches = self._samples = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._active = trainer.is_global_zero and self.enabled()
        self._total = float(trainer.estimated_stepping_batches)
        self._n = self.every_n_steps or default_every_n_steps(self._total)
        self._start, self._start_step = time.perf_counter(), trainer.global_step
        self._last_step = trainer.global_step
        self._reset_window()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if torch.is_tensor(loss):
            # Lightning divides the loss it hands to callbacks by the accumulation count
            loss = loss.detach().float() * trainer.accumulate_grad_batches
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._batches += 1
        image = batch.get("image") if isinstance(batch, Mapping) else None
        self._samples += (image.shape[0] if torch.is_tensor(image) else extract_batch_size(batch)) * trainer.world_size
        step = trainer.global_step
        if step == self._last_step or (step % self._n and step < self._total):
            return
        self._last_step = step
        print(self._line(trainer, step), flush=True)
        self._reset_window()

    def _line(self, trainer, step: int) -> str:
        now = time.perf_counter()
        total = f"/{int(self._total)}" if math.isfinite(self._total) else ""
        parts = [f"step {step}{total}", f"epoch {trainer.current_epoch}"
                 + (f"/{trainer.max_epochs - 1}" if trainer.max_epochs and trainer.max_epochs > 0 else "")]
        if self._loss_sum is not None:
            parts.append(f"loss {self._loss_sum.item() / self._batches:.4f}")
        parts.append(f"samples/s {self._samples / max(now - self._window_start, 1e-9):.1f}")
        elapsed, done = now - self._start, step - self._start_step
        parts.append(f"elapsed {_clock(elapsed)}")
        if math.isfinite(self._total) and done > 0:
            parts.append(f"eta {_clock(elapsed / done * max(self._total - step, 0))}")
        return "  ".join(parts)

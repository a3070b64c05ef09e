"""FLIP's unmasked tuning: train the last part of a masked run with every patch visible."""

from __future__ import annotations

from lightning.pytorch import Callback

from vlp.errors import VLPError
from vlp.towers.masking import PatchMask


class UnmaskedTuning(Callback):
    """From ``start_step`` (or ``start_fraction`` of the run's steps) on, switch FLIP masking
    off in every image tower and multiply the learning rate by ``lr_factor`` (the schedule
    continues, scaled). The switch is kept in checkpoints, so a resumed run stays unmasked.

    Args:
        start_step: the optimiser step at which masking stops.
        start_fraction: alternatively, the share of ``trainer.estimated_stepping_batches``.
        lr_factor: learning-rate factor of the unmasked phase.
    """

    def __init__(self, start_step: int | None = None, start_fraction: float | None = None, lr_factor: float = 1.0):
        if (start_step is None) == (start_fraction is None):
            raise VLPError("UnmaskedTuning needs exactly one of start_step and start_fraction")
        if start_fraction is not None and not 0 < start_fraction < 1:
            raise VLPError(f"UnmaskedTuning.start_fraction must be in (0, 1), got {start_fraction}")
        if lr_factor <= 0:
            raise VLPError(f"UnmaskedTuning.lr_factor must be > 0, got {lr_factor}")
        self.start_step = start_step
        self.start_fraction = start_fraction
        self.lr_factor = lr_factor
        self.applied = False

    def _start(self, trainer) -> int:
        if self.start_step is not None:
            return self.start_step
        return int(self.start_fraction * trainer.estimated_stepping_batches)

    @staticmethod
    def _unmask(module) -> int:
        masks = [m for m in module.modules() if isinstance(m, PatchMask)]
        for m in masks:
            m.ratio = 0.0
        return len(masks)

    def on_fit_start(self, trainer, pl_module) -> None:
        if not any(isinstance(m, PatchMask) and m.ratio > 0 for m in pl_module.modules()) and not self.applied:
            raise VLPError("UnmaskedTuning is in the recipe but no image tower masks patches (model.towers.image.mask_ratio)")

    def on_train_start(self, trainer, pl_module) -> None:
        if self.applied:  # resumed after the switch: masks are not in the checkpoint, the lr is
            self._unmask(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.applied or trainer.global_step < self._start(trainer):
            return
        self._unmask(pl_module)
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [lr * self.lr_factor for lr in scheduler.base_lrs]
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
        self.applied = True

    def state_dict(self) -> dict:
        return {"applied": self.applied}

    def load_state_dict(self, state_dict: dict) -> None:
        self.applied = state_dict.get("applied", False)

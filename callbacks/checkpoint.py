"""Step checkpoints: every N optimiser steps, the newest K kept, plus `last.ckpt` and a final one."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    """Save every ``every_n_steps`` optimiser steps (mid-epoch too), keep the newest ``keep``,
    keep ``last.ckpt`` pointing at the newest, and save once more when training ends off the
    step grid (Lightning's ModelCheckpoint would leave the final steps unsaved).

    Files are written atomically by `vlp fit` (see vlp.checkpointing); resume with
    ``vlp fit --recipe X --ckpt_path last``. Other ModelCheckpoint arguments (``dirpath``,
    ``filename``) pass through.
    """

    def __init__(self, every_n_steps: int = 1000, keep: int = 2, save_last: bool = True,
                 dirpath: str | None = None, filename: str | None = None):
        if every_n_steps < 1 or keep < 1:
            raise ValueError(f"StepCheckpoint needs every_n_steps >= 1 and keep >= 1, got {every_n_steps}, {keep}")
        super().__init__(dirpath=dirpath, filename=filename, monitor="step", mode="max", save_top_k=keep,
                         every_n_train_steps=every_n_steps, save_last=save_last)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)

"""VLPModule: two towers and a list of weighted objectives, one training step for all recipes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn

from vlp.errors import VLPError
from vlp.objectives.base import Objective
from vlp.optim import OptimConfig, build_optimizer


class VLPModule(LightningModule):
    """Towers -> shared outputs -> objectives -> weighted sum.

    Args:
        image_tower: maps ``batch["image"] [B,3,H,W]`` to ``{"pooled", "tokens"}``.
        text_tower: maps ``batch["text"] [B,L]`` to ``{"pooled", "tokens"}``.
        objectives: the losses; each logged as ``train/<name>_loss``; the total
            ``train/loss`` is the sum of ``weight * loss``.
        optim: optimiser and schedule settings.

    Shared outputs given to objectives: ``image_embed``, ``text_embed``
    (L2-normalised ``[B, E]``), ``image_tokens``, ``text_tokens``.
    """

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        objectives: list[Objective],
        optim: OptimConfig | None = None,
    ):
        super().__init__()
        # Under the CLI the hyperparameters are the recipe's class_path/init_args (so a
        # checkpoint can rebuild the model); built by hand, the parts are not hyperparameters.
        built_by_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if built_by_cli else ["image_tower", "text_tower", "objectives"])
        if not objectives:
            raise VLPError("model.objectives is empty: a recipe needs at least one objective")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise VLPError(f"objective names must differ, got {names}")
        dims = (getattr(image_tower, "embed_dim", None), getattr(text_tower, "embed_dim", None))
        if None not in dims and dims[0] != dims[1]:
            raise VLPError(f"image and text towers must share embed_dim, got {dims[0]} and {dims[1]}")
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.objectives = nn.ModuleList(objectives)
        self.optim = optim or OptimConfig()
        self.recipe: str | None = None  # set by `vlp fit --recipe`, kept in checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vlp"] = {"recipe": self.recipe}

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` -> L2-normalised ``[B,E]``."""
        return F.normalize(self.image_tower(image)["pooled"], dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """``[B,L]`` -> L2-normalised ``[B,E]``."""
        return F.normalize(self.text_tower(text)["pooled"], dim=-1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        img = self.image_tower(batch["image"])
        txt = self.text_tower(batch["text"])
        return {
            "image_embed": F.normalize(img["pooled"], dim=-1),
            "text_embed": F.normalize(txt["pooled"], dim=-1),
            "image_tokens": img["tokens"],
            "text_tokens": txt["tokens"],
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self(batch)
        total = 0.0
        batch_size = batch["image"].shape[0]
        for objective in self.objectives:
            missing = objective.needs - batch.keys()
            if missing:
                raise VLPError(f"objective {objective.name} needs batch fields {sorted(missing)}")
            loss, metrics = objective(outputs, batch)
            total = total + objective.weight * loss
            self.log(f"train/{objective.name}_loss", loss, batch_size=batch_size)
            for key, value in metrics.items():
                self.log(f"train/{objective.name}_{key}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        for objective in self.objectives:
            objective.after_optimizer_step()

    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise VLPError("the schedule needs a finite length: set trainer.max_steps or trainer.max_epochs")
        opt, sched = build_optimizer(self, self.optim, int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

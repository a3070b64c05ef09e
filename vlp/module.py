"""VLPModule: two towers and a list of weighted objectives, one training step for all recipes."""

from __future__ import annotations

import inspect
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn

from vlp.errors import VLPError
from vlp.objectives.base import Objective
from vlp.optim import OptimConfig, build_optimizer


def rng_states() -> dict:
    """The process's RNG states in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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
        for objective in objectives:
            objective.attach(image_tower, text_tower)
        self.objectives = nn.ModuleList(objectives)
        self._needs_views = any("views" in o.needs for o in objectives)
        self._needs_tokens = any(o.needs_tokens for o in objectives)
        self._pooled_kw = {name: _takes_tokens_flag(tower) for name, tower in
                           (("image", image_tower), ("text", text_tower))}
        self.optim = optim or OptimConfig()
        self.recipe: str | None = None  # set by `vlp fit --recipe`, kept in checkpoints
        self.nonfinite_skipped = 0
        self._nonfinite_in_row = 0
        self._last_loss: torch.Tensor | None = None
        self._step_rng: tuple[int, dict] | None = None  # (step, RNG states as that step began)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # RNG states of every rank (Lightning keeps none), so that a resumed run draws the
        # same random numbers as the uninterrupted one
        states = rng_states()
        if self._step_rng is not None and self._trainer is not None and self._step_rng[0] == self.trainer.global_step:
            states = self._step_rng[1]  # saved before this step completed (after an error): its start
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
        else:
            gathered = [states]
        checkpoint["vlp"] = {"recipe": self.recipe, "rng": gathered, "nonfinite_skipped": self.nonfinite_skipped}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("vlp") or {}
        self.recipe = saved.get("recipe", self.recipe)
        self.nonfinite_skipped = saved.get("nonfinite_skipped", 0)
        rng = saved.get("rng")
        if rng:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            if rank < len(rng):
                set_rng_states(rng[rank])

    def setup(self, stage: str) -> None:
        # One sample of the data's shapes (a blank image, a tokenized caption): Lightning's model
        # summary counts the FLOPs of its forward (towers, eval mode) as "Total FLOPs".
        data = self.trainer.datamodule
        size, tokenizer = getattr(data, "image_size", None), getattr(data, "tokenizer", None)
        if self.example_input_array is None and size and callable(tokenizer):
            sample = {"image": torch.zeros(1, 3, size, size), "text": tokenizer(["a sample caption"])}
            self.example_input_array = (self.trainer.precision_plugin.convert_input(sample),)

    def _tower(self, name: str, x: torch.Tensor, tokens: bool) -> dict[str, torch.Tensor]:
        tower = self.image_tower if name == "image" else self.text_tower
        return tower(x) if tokens or not self._pooled_kw[name] else tower(x, tokens=False)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` -> L2-normalised ``[B,E]``."""
        return F.normalize(self._tower("image", image, False)["pooled"], dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """``[B,L]`` -> L2-normalised ``[B,E]``."""
        return F.normalize(self._tower("text", text, False)["pooled"], dim=-1)

    def forward(self, batch: dict, tokens: bool | None = None) -> dict[str, torch.Tensor]:
        """Tower outputs for the objectives. ``tokens`` (default: whether an objective needs
        them) adds ``image_tokens`` / ``text_tokens``; without them the towers may run their
        last block at the pooled token only."""
        tokens = self._needs_tokens if tokens is None else tokens
        img = self._tower("image", batch["image"], tokens)
        txt = self._tower("text", batch["text"], tokens)
        outputs = {
            "image_embed": F.normalize(img["pooled"], dim=-1),
            "text_embed": F.normalize(txt["pooled"], dim=-1),
        }
        if tokens:
            outputs["image_tokens"] = img["tokens"]
            outputs["text_tokens"] = txt["tokens"]
        if self._needs_views and "views" in batch:  # SLIP: both views through the same tower at once
            views = batch["views"]
            feats = self._tower("image", views.flatten(0, 1), tokens)["features"]
            outputs["view_features"] = feats.view(2, views.shape[1], -1)
        return outputs

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
        self._last_loss = total.detach()
        return total

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the step (drop every gradient) when the loss or a gradient is not finite."""
        if self._trainer is not None and str(self.trainer.precision).startswith("16"):
            return  # the gradient scaler skips non-finite steps itself
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        ok = torch.ones((), device=self.device)
        if grads:
            ok = ok * torch.stack(torch._foreach_norm(grads)).isfinite().all()
        if self._last_loss is not None:
            ok = ok * self._last_loss.isfinite().to(ok.device)
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)  # every rank decides alike
        if bool(ok):
            self._nonfinite_in_row = 0
            return
        self._nonfinite_in_row += 1
        self.nonfinite_skipped += 1
        for p in self.parameters():
            p.grad = None  # AdamW leaves parameters without gradients untouched
        limit = self.optim.max_nonfinite_in_row
        if self._nonfinite_in_row > limit:
            step = self.trainer.global_step if self._trainer is not None else "?"
            raise VLPError(
                f"the loss or gradients were not finite for {self._nonfinite_in_row} steps in a row (step {step}; "
                f"model.optim.max_nonfinite_in_row is {limit}): lower model.optim.lr, raise warmup_steps, "
                "or check the data"
            )

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_rng = (self.trainer.global_step, rng_states())

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        for objective in self.objectives:
            objective.after_optimizer_step()
        metrics = {"train/nonfinite_skipped": float(self.nonfinite_skipped)} if self.nonfinite_skipped else {}
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if hasattr(datamodule, "data_metrics"):
            metrics.update(datamodule.data_metrics())
        if metrics:
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def configure_optimizers(self):
        total = schedule_steps(self.trainer)
        if not math.isfinite(total):
            raise VLPError("the schedule needs a finite length: set trainer.max_steps or trainer.max_epochs")
        opt, sched = build_optimizer(self, self.optim, int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def schedule_steps(trainer) -> float:
    """Optimiser steps of the whole run (the schedule's length): Lightning's
    ``estimated_stepping_batches``, but with the epoch length asked of the datamodule when it
    can tell (``epoch_batches()``). Lightning's own estimate builds and iterates the training
    loader before a checkpoint is restored and then never hands the loader its saved state, so
    a resumed ``max_epochs`` run read other data than the uninterrupted one."""
    datamodule = getattr(trainer, "datamodule", None)
    if trainer.max_epochs == -1 or not callable(getattr(datamodule, "epoch_batches", None)):
        return trainer.estimated_stepping_batches
    batches = datamodule.epoch_batches()
    limit = trainer.limit_train_batches
    batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * limit)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def _takes_tokens_flag(tower: nn.Module) -> bool:
    """Whether a tower's forward accepts ``tokens=False`` (vlp's towers do; a user's may not)."""
    try:
        return "tokens" in inspect.signature(tower.forward).parameters
    except (TypeError, ValueError):
        return False

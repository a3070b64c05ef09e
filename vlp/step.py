"""How a batch becomes gradients: the training step as an object the module calls.

``PlainStep`` is one forward and one backward over the whole batch (Lightning's automatic
optimisation). A step that splits the batch (the gradient cache of BASIC) plugs in beside it
with ``automatic = False`` and drives the backward passes itself.
"""

from __future__ import annotations

import torch


class TrainStep:
    """Base class: ``__call__(module, batch, batch_idx)`` returns the loss for Lightning's
    backward (``automatic = True``), or None to skip the batch (no backward, no update)."""

    automatic: bool = True

    def __call__(self, module, batch: dict, batch_idx: int) -> torch.Tensor | None:
        raise NotImplementedError

    def before_optimizer_step(self, module) -> None:
        """Called after the backward, before the optimiser step (see PlainStep)."""


class PlainStep(TrainStep):
    """Towers -> declared outputs -> objectives -> weighted sum, one backward.

    Non-finite steps are skipped: a loss that is not finite on any rank makes every rank
    return None (the ranks agree through the strategy), so Lightning runs no backward and
    AdamW updates nothing. Gradients that are not finite under a finite loss are caught after
    the backward where the strategy keeps gradients on the parameters (one device, DDP,
    FSDP2); 16-mixed precision leaves both to its gradient scaler. More than
    ``model.optim.max_nonfinite_in_row`` in a row stop the run (VLPModule.count_nonfinite).
    """

    def __call__(self, module, batch: dict, batch_idx: int) -> torch.Tensor | None:
        loss = module.objective_loss(module(batch), batch)
        if module.scaler_skips_nonfinite():
            return loss
        finite = bool(torch.isfinite(loss.detach()))
        if module._trainer is not None:
            finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return loss
        module.count_nonfinite()
        return None

    def before_optimizer_step(self, module) -> None:
        if module.scaler_skips_nonfinite() or not module.grads_on_parameters():
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:  # a skipped batch: nothing to check
            return
        ok = torch.stack(torch._foreach_norm(grads)).isfinite().all()
        finite = bool(ok)
        if module._trainer is not None:
            finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        module.count_nonfinite()
        for p in module.parameters():
            p.grad = None  # AdamW leaves parameters without gradients untouched

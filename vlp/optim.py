"""AdamW with CLIP's weight-decay exclusions, and open_clip's warmup + cosine schedule (or
linear, constant, or big_vision's reciprocal square root with a cooldown)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlp.errors import VLPError


@dataclass
class OptimConfig:
    """Optimiser and schedule.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW decay, applied to matrices only (see param_groups).
        betas, eps: AdamW moments and epsilon (CLIP: 0.9, 0.98, 1e-6).
        warmup_steps: linear warmup from lr/warmup_steps to lr.
        schedule: ``cosine`` (to 0 at the last step, as open_clip), ``linear`` (to 0, as
            ALIGN), ``constant``, or ``rsqrt`` (big_vision's: ``1 / sqrt(1 + (step - warmup) /
            rsqrt_timescale)`` after the warmup, as CLIPPO and the ViT-G / LiT configs).
        rsqrt_timescale: ``rsqrt`` is at 1/sqrt(2) of the peak this many steps after the
            warmup (big_vision's ``timescale``).
        cooldown_steps: linear decay to 0 over the last this many steps, on top of the
            schedule (big_vision's ``cooldown_steps``, used with ``rsqrt``); 0 = none.
        max_nonfinite_in_row: a step whose loss or gradients are not finite is skipped
            (no parameter update, counted as ``train/nonfinite_skipped``); after more than
            this many in a row the run stops with an error. With 16-mixed precision the
            gradient scaler does the skipping instead.
        fused: torch's fused AdamW kernel (one kernel over all parameters instead of a few
            per tensor list; same update up to rounding). None = fused when every trainable
            parameter is a plain CPU or CUDA tensor (not a DTensor of FSDP2), else foreach.
    """

    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant", "rsqrt"] = "cosine"
    rsqrt_timescale: int = 10_000
    cooldown_steps: int = 0
    max_nonfinite_in_row: int = 5
    fused: bool | None = None

    def __post_init__(self):
        if self.lr <= 0:
            raise VLPError(f"model.optim.lr must be > 0, got {self.lr}")
        if self.max_nonfinite_in_row < 0:
            raise VLPError(f"model.optim.max_nonfinite_in_row must be >= 0, got {self.max_nonfinite_in_row}")
        if self.warmup_steps < 0:
            raise VLPError(f"model.optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.rsqrt_timescale < 1 or self.cooldown_steps < 0:
            raise VLPError(f"model.optim.rsqrt_timescale must be >= 1 and cooldown_steps >= 0, got "
                           f"{self.rsqrt_timescale} and {self.cooldown_steps}")


def no_decay_names(model: nn.Module) -> set[str]:
    """Names that a submodule excludes itself via timm's ``no_weight_decay()``
    (class token, positional embedding of timm ViTs)."""
    names = set()
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decay for weight matrices; none for tensors with fewer than 2
    dims (biases, norm gains, scalars such as logit scales; open_clip's rule) and
    for the tokens and embeddings timm marks with ``no_weight_decay()``.
    Frozen parameters are left out. Not timm's ``param_groups_weight_decay`` (or
    ``create_optimizer_v2``): it reads only the top model's ``no_weight_decay()``, so a timm
    ViT nested under ``towers.image.trunk`` would get its 3-d ``cls_token`` and ``pos_embed``
    decayed, and it puts the no-decay group first, so that existing checkpoints (whose AdamW
    state follows the group order) would not resume (given the nested names, it groups as here)."""
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name not in skip else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str, rsqrt_timescale: int = 10_000,
              cooldown_steps: int = 0) -> float:
    """Multiplier of the peak lr at ``step`` (0-based), open_clip's ``cosine_lr``; ``rsqrt`` and
    the cooldown as big_vision's ``create_learning_rate_schedule``."""
    cooldown = min(1.0, (total_steps - step) / cooldown_steps) if cooldown_steps else 1.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps * cooldown
    if schedule == "constant":
        return cooldown
    e, es = step - warmup_steps, max(1, total_steps - warmup_steps)
    if schedule == "rsqrt":
        return cooldown / math.sqrt(1 + e / rsqrt_timescale)
    if schedule == "linear":
        return (1.0 - min(e, es) / es) * cooldown
    return 0.5 * (1 + math.cos(math.pi * min(e, es) / es)) * cooldown


def fused_supported(params) -> bool:
    """torch's fused AdamW takes these parameters: floating point, plain tensors, CPU or CUDA."""
    from torch.distributed.tensor import DTensor

    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() and not isinstance(p, DTensor)
               for p in params)


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int, cpu_adam: bool = False):
    """AdamW (torch's; ``cpu_adam``: DeepSpeed's DeepSpeedCPUAdam in AdamW mode, the same
    update, for ZeRO-Offload of GPU-trained parameters) and the per-step schedule."""
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    if cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # JIT-built by DeepSpeed on first use

        opt = DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, adamw_mode=True)
    else:
        fused = fused_supported(params) if cfg.fused is None else cfg.fused
        # not fused: None, not False (torch reads fused=False as "no foreach either": a per-tensor loop)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, cfg.warmup_steps, total_steps, cfg.schedule, cfg.rsqrt_timescale,
                                    cfg.cooldown_steps)
    )
    return opt, sched

"""Activation checkpointing of tower blocks (the towers' ``grad_checkpointing`` option)."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn


def call_block(block: nn.Module, *args, recompute: bool = False, **kwargs) -> torch.Tensor:
    """``block(*args, **kwargs)``; with ``recompute`` (while autograd records) under activation
    checkpointing: the block's inner activations are not kept but computed again in the
    backward (torch.utils.checkpoint, non-reentrant; the random state of dropout and drop path
    is replayed, so the gradients are those of the plain call). The block is called through
    ``__call__`` either way, so wrappers' hooks (FSDP2's ``fully_shard``, DeepSpeed) run."""
    if recompute and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)

"""A training batch: a dict whose tensors (and lists) share one leading batch dimension, so that
it can be split into chunks (the gradient cache of BASIC runs a batch chunk by chunk)."""

from __future__ import annotations

import torch

from vlp.errors import VLPError


def batch_size(batch: dict) -> int:
    """The common leading size of the batch's tensors and lists; an error names a field that
    disagrees (every field must have the batch dimension first, e.g. ``views [B, 2, 3, H, W]``)."""
    sizes = {k: (v.shape[0] if torch.is_tensor(v) else len(v)) for k, v in batch.items()
             if torch.is_tensor(v) or isinstance(v, list)}
    if not sizes:
        raise VLPError("a batch needs at least one tensor or list field")
    if len(set(sizes.values())) > 1:
        raise VLPError(f"batch fields disagree on the batch size (batch dimension first): {sizes}")
    return next(iter(sizes.values()))


def split_batch(batch: dict, chunk_size: int) -> list[dict]:
    """``batch`` cut along its batch dimension into chunks of ``chunk_size`` (the last may be
    smaller); tensors are views, lists are sliced, other values are shared."""
    if chunk_size < 1:
        raise VLPError(f"chunk size must be >= 1, got {chunk_size}")
    n = batch_size(batch)
    return [{k: (v[i:i + chunk_size] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items()}
            for i in range(0, n, chunk_size)]

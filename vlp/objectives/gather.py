"""Feature exchange across ranks for contrastive losses."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x [B, ...]`` of every rank along dim 0, differentiably.

    The backward pass sums the gradients of all ranks into each rank's slice
    (torch.distributed.nn), which is what the local-loss form needs.
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)

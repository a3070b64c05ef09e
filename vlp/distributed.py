"""The ground floor of several processes: rank and world, gathers with and without gradient, and
the random-number states a run saves and replays. Everything above (objectives, towers, eval,
the step, the module) imports from here; this module imports nothing of vlp."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums, over ranks, the gradients of this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        ctx.rank, ctx.batch = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every slice
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x [B, ...]`` of every rank along dim 0, differentiably.

    The backward pass gives each rank the sum over ranks of the gradients with respect to its
    own slice, which is what the local-loss form of the contrastive losses needs (as
    torch.distributed.nn's all_gather). Every rank must pass the same ``B``.
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; every rank must call it);
    ``[obj]`` in one process."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


RNG_KINDS = ("torch", "cuda", "python", "numpy")


def rng_states(kinds: tuple[str, ...] = RNG_KINDS) -> dict:
    """The process's random states of ``kinds`` (torch's CPU generator, every CUDA device's where
    CUDA is in use, Python's ``random``, NumPy's global one), in types that
    ``torch.load(weights_only=True)`` accepts: a checkpoint keeps them so that a resumed run
    draws what the uninterrupted one drew; the gradient cache keeps torch's and CUDA's to replay
    a chunk's dropout and masks."""
    states: dict = {}
    if "torch" in kinds:
        states["torch"] = torch.get_rng_state()
    if "cuda" in kinds and torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if "python" in kinds:
        states["python"] = random.getstate()
    if "numpy" in kinds:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        states["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    return states


def set_rng_states(states: dict) -> None:
    """Restore what ``rng_states`` saved (the kinds it holds; the others are left alone)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "python" in states:
        random.setstate(states["python"])
    if "numpy" in states:
        name, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))

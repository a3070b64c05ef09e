"""Timing full train steps side by side, shared by step_time.py (several recipes) and
flip_mask_speed.py (one model at several mask ratios)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable, Iterable, TypeVar

import torch
from report import section_lines

K = TypeVar("K", bound=Hashable)


def train_step_seconds(model, batch: dict, opt: torch.optim.Optimizer, device: str) -> float:
    """Wall seconds of one full optimiser step: the model's own training step (forward, loss),
    backward and ``opt.step()``; CUDA is synchronised before and after."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = model.training_step(batch, 0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def alternating_medians(keys: Iterable[K], step: Callable[[K], float], warmup: int, steps: int) -> dict[K, float]:
    """Median of ``step(key)``'s seconds per key, the keys taking turns round after round so that
    machine drift hits all alike; the first ``warmup`` rounds are not counted."""
    keys = list(keys)
    times: dict[K, list[float]] = {k: [] for k in keys}
    for round_ in range(warmup + steps):
        for k in keys:
            t = step(k)
            if round_ >= warmup:
                times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def section_head(device: str, machine: str, command: str, note: str, columns: list[str]) -> list[str]:
    """The lines that open a results section: date, device, machine, torch version and threads;
    the command and ``note``; the table's head for ``columns``."""
    return section_lines(f"{device}, {machine}, torch {torch.__version__}, threads {torch.get_num_threads()}",
                         command, columns, note)

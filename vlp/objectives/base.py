"""The objective contract."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from vlp.towers.output import TowerOutput


class Objective(nn.Module):
    """Base class of objectives.

    Args:
        weight: factor of this loss in the total.
        name: the name under which the loss is logged (``train/<name>_loss``).

    Class attributes:
        reads: the tower outputs the objective reads, as ``NAME.PART`` with NAME a tower or
            shared name of the module and PART a TowerOutput field (``image.pooled``,
            ``text.tokens``, ``views.features``). The module computes exactly these: tokens
            only when some objective reads them, a name only when some objective reads it.
        fields: batch fields the objective reads itself (beyond the towers' inputs).

    ``forward(outputs, batch)`` gets ``{NAME: TowerOutput}`` and the batch and returns
    ``(loss, metrics)``. Objectives may own modules (a projector, a decoder); ``attach`` gives
    them the towers by name once, e.g. to size a projector on a tower's width.
    """

    reads: frozenset[str] = frozenset({"image.pooled", "text.pooled"})
    fields: frozenset[str] = frozenset()
    default_name = "objective"

    def __init__(self, weight: float = 1.0, name: str | None = None):
        super().__init__()
        self.weight = weight
        self.name = name or self.default_name

    def forward(self, outputs: Mapping[str, TowerOutput], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def attach(self, towers: Mapping[str, nn.Module]) -> None:
        """Called once by VLPModule with the towers by name (shared names included)."""


def check_embed_dims(objective: Objective, towers: Mapping[str, nn.Module], names: tuple[str, ...]) -> None:
    """The towers of ``names`` (those that report ``embed_dim``) must embed into one space."""
    from vlp.errors import VLPError

    dims = {n: getattr(towers.get(n), "embed_dim", None) for n in names}
    known = {n: d for n, d in dims.items() if d is not None}
    if len(set(known.values())) > 1:
        listed = " and ".join(f"{n} {d}" for n, d in known.items())
        raise VLPError(f"objective {objective.name} compares {', '.join(names)} embeddings: the towers must share "
                       f"embed_dim, got {listed}")

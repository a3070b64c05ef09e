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

    Attributes (set per instance from the names an objective is given, e.g.
    ``ContrastiveLoss(a="image", b="text")``; a class attribute serves as the default):
        reads: the tower outputs the objective reads, as ``NAME.PART`` with NAME a tower or
            shared name of the module and PART a TowerOutput field (``image.pooled``,
            ``text.tokens``, ``views.features``). The module computes exactly these: tokens
            only when some objective reads them, a name only when some objective reads it.
        fields: names of batch fields the objective reads itself (beyond the towers' inputs);
            the module maps each to its field (``model.inputs``, a name reads the field of
            its own name unless mapped).

    ``forward(outputs, batch)`` gets ``{NAME: TowerOutput}`` and the batch as a mapping from
    names to fields (vlp.module.FieldView: ``batch["text"]`` is the field the name ``text``
    reads) and returns ``(loss, metrics)``. Objectives may own modules (a projector); modules
    that inference uses too belong to the module's named heads. ``attach`` gives them the
    towers (and heads) by name once, e.g. to size a projector on a tower's width.
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

    heads_used: tuple[str, ...] = ()  # names of the module's heads it trains (``model.heads``)

    def attach(self, towers: Mapping[str, nn.Module]) -> None:
        """Called once by VLPModule with the towers by name (shared names included), after
        ``bind_heads``."""

    def bind_heads(self, heads: Mapping[str, nn.Module]) -> None:
        """The module's heads this objective uses (``heads_used``), by name. Kept outside the
        objective's own modules: a head's parameters belong to ``model.heads`` alone."""
        self.__dict__["_heads"] = dict(heads)

    def head(self, name: str) -> nn.Module:
        heads = self.__dict__.get("_heads") or {}
        if name not in heads:
            from vlp.errors import VLPError

            raise VLPError(f"objective {self.name} has no head {name!r}: it is given its heads when the module is "
                           "built (model.heads)")
        return heads[name]


def check_embed_dims(objective: Objective, towers: Mapping[str, nn.Module], names: tuple[str, ...]) -> None:
    """The towers of ``names`` (those that report ``embed_dim``) must embed into one space."""
    from vlp.errors import VLPError

    dims = {n: getattr(towers.get(n), "embed_dim", None) for n in names}
    known = {n: d for n, d in dims.items() if d is not None}
    if len(set(known.values())) > 1:
        listed = " and ".join(f"{n} {d}" for n, d in known.items())
        raise VLPError(f"objective {objective.name} compares {', '.join(names)} embeddings: the towers must share "
                       f"embed_dim, got {listed}")

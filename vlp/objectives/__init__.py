"""Objectives: nn.Modules that turn the shared model outputs and the batch into a loss.

Each has a ``weight`` and a ``name``; ``forward(outputs, batch)`` returns
``(loss, metrics)``. VLPModule sums ``weight * loss`` and logs every term by name,
so a new objective is a new class here and a line in a recipe.
"""

from vlp.objectives.base import Objective
from vlp.objectives.captioning import CaptioningLoss
from vlp.objectives.contrastive import ContrastiveLoss
from vlp.objectives.sigmoid import SigmoidLoss
from vlp.objectives.simclr import SimCLRLoss

__all__ = ["CaptioningLoss", "ContrastiveLoss", "Objective", "SigmoidLoss", "SimCLRLoss"]

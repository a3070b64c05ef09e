"""SLIP's SimCLR branch (Mu et al. 2021; the SLIP repository's SIMCLRLoss and image MLP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlp.errors import VLPError
from vlp.objectives.base import Objective
from vlp.distributed import all_gather_with_grad, rank_and_world


def slip_mlp(in_dim: int, mlp_dim: int, out_dim: int, batch_norm: bool = True) -> nn.Sequential:
    """SLIP's 3-layer projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear."""
    norm = (lambda: nn.BatchNorm1d(mlp_dim)) if batch_norm else nn.Identity
    return nn.Sequential(
        nn.Linear(in_dim, mlp_dim), norm(), nn.ReLU(inplace=True),
        nn.Linear(mlp_dim, mlp_dim), norm(), nn.ReLU(inplace=True),
        nn.Linear(mlp_dim, out_dim),
    )


class SimCLRLoss(Objective):
    """NT-Xent over two augmented views of every image.

    The views (``batch["views"]``, ``[B, 2, 3, H, W]``) go through the image tower shared under
    the name ``views`` (``model.share: {views: image}``);
    its pooled features (before the CLIP projection) go
    through a 3-layer MLP with batch norm (SLIP: 4096 hidden, 256 out), are normalised, and
    ``loss = (CE([a b^T, a a^T - big I] / t, y) + CE([b a^T, b b^T - big I] / t, y)) / 2``
    with temperature ``t = 0.1``: each view's positive is the other view of its image, its
    negatives every other view of the global batch (gathered with gradient across ranks).
    SLIP's total is ``CLIP + ssl_scale * SimCLR``: give this objective ``weight: ssl_scale``.
    Under DDP on GPUs set ``trainer.sync_batchnorm: true`` (SLIP synchronises the MLP's BN).

    Args:
        weight, name: see Objective.
        views: the name that encodes the two views (a name sharing the image tower).
        mlp_dim, out_dim: projector hidden and output sizes.
        temperature: NT-Xent temperature.
        batch_norm: BN in the projector (SLIP); False is for tests that compare ranks.
    """

    default_name = "simclr"

    def __init__(self, weight: float = 1.0, name: str | None = None, views: str = "views", mlp_dim: int = 4096,
                 out_dim: int = 256, temperature: float = 0.1, batch_norm: bool = True):
        super().__init__(weight, name)
        self.views = views
        self.reads = frozenset({f"{views}.features"})
        self.mlp_dim, self.out_dim, self.batch_norm = mlp_dim, out_dim, batch_norm
        self.temperature = temperature
        self.mlp: nn.Module | None = None

    def attach(self, towers) -> None:
        if self.views not in towers:
            raise VLPError(f"SimCLRLoss reads the tower of `{self.views}`: share the image tower with model.share: "
                           f"{{{self.views}: image}}")
        width = getattr(towers[self.views], "width", None)
        if width is None:
            raise VLPError("SimCLRLoss needs an image tower that reports its feature width (TimmImageTower)")
        self.mlp = slip_mlp(width, self.mlp_dim, self.out_dim, self.batch_norm)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = outputs[self.views].features  # [B, 2, width]
        q_a = F.normalize(self.mlp(features[:, 0]), dim=-1)
        q_b = F.normalize(self.mlp(features[:, 1]), dim=-1)
        return nt_xent(q_a, q_b, self.temperature)


def nt_xent(q_a: torch.Tensor, q_b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict]:
    rank, _ = rank_and_world()
    local = q_a.shape[0]
    k_a, k_b = all_gather_with_grad(q_a), all_gather_with_grad(q_b)
    labels = torch.arange(local, device=q_a.device) + rank * local
    self_mask = F.one_hot(labels, k_a.shape[0]).to(q_a.dtype) * 1e9
    logits_aa = q_a @ k_a.T / temperature - self_mask
    logits_bb = q_b @ k_b.T / temperature - self_mask
    logits_ab = q_a @ k_b.T / temperature
    logits_ba = q_b @ k_a.T / temperature
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
    with torch.no_grad():
        acc = (torch.cat([logits_ab, logits_aa], dim=1).argmax(1) == labels).float().mean()
    return (loss_a + loss_b) / 2, {"acc": acc}

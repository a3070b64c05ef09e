"""FLIP patch masking (Li et al. 2023): drop a random share of each image's patch tokens.

Installed by TimmImageTower in place of timm's ``patch_drop`` slot, which sits right after
the position embedding and before the transformer blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from vlp.distributed import rank_and_world


class PatchMask(nn.Module):
    """Per sample, keep ``floor(N * (1 - ratio))`` (at least 1) of the ``N`` patch tokens,
    chosen as the lowest values of uniform noise (argsort, as FLIP/MAE); the
    ``num_prefix_tokens`` leading tokens (class token, registers) are always kept. Acts in
    training only: in eval mode (and with ratio 0) every token passes.

    The noise is drawn for all ranks at once from the process RNG and each rank takes its
    own slice, so ranks mask differently while the draw stays reproducible and resumable.

    ``kept [B, K]``: after each forward, the patch positions (indices into the ``N`` patches)
    that each sample kept, in the order the tokens now have; None when nothing was dropped. The
    tower reports them as its output's ``kept``.
    """

    def __init__(self, ratio: float = 0.0, num_prefix_tokens: int = 1):
        super().__init__()
        self.ratio = ratio
        self.num_prefix_tokens = num_prefix_tokens
        self.kept: torch.Tensor | None = None

    @property
    def ratio(self) -> float:
        return self._ratio

    @ratio.setter
    def ratio(self, value: float) -> None:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {value}")
        self._ratio = float(value)

    def keep_count(self, num_patches: int) -> int:
        return max(1, int(num_patches * (1.0 - self.ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = None
        if not self.training or self.ratio == 0.0:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        batch, num, dim = patches.shape
        rank, world = rank_and_world()
        noise = torch.rand(world, batch, num, device=x.device)[rank]
        keep = noise.argsort(dim=1)[:, : self.keep_count(num)]
        self.kept = keep
        patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, dim))
        return torch.cat([prefix, patches], dim=1)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, num_prefix_tokens={self.num_prefix_tokens}"

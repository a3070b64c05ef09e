"""Image tower on timm: any ViT, ResNet, MLP-Mixer, ConvNeXt, EfficientNet by name."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from vlp.errors import VLPError
from vlp.towers.masking import PatchMask
from vlp.towers.projection import Projection, make_projection


@torch.no_grad()
def clip_init(model: nn.Module, width: int) -> None:
    """open_clip's VisionTransformer initialisation on a timm model (see TimmImageTower)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.reset_parameters()
    for module in model.modules():
        # attention as torch's nn.MultiheadAttention: xavier-uniform in-projection, zero biases
        qkv, out = getattr(module, "qkv", None), getattr(module, "proj", None)
        if isinstance(qkv, nn.Linear) and isinstance(out, nn.Linear):
            nn.init.xavier_uniform_(qkv.weight)
            for bias in (qkv.bias, out.bias):
                if bias is not None:
                    nn.init.zeros_(bias)
    for name in ("cls_token", "pos_embed"):
        param = getattr(model, name, None)
        if isinstance(param, nn.Parameter):
            nn.init.normal_(param, std=width**-0.5)


class TimmImageTower(nn.Module):
    """``timm.create_model(model_name)`` without its classifier, then a projection.

    Pooling is the model's own head pooling (``global_pool``: ``token`` = class token,
    ``avg`` = mean of tokens / spatial average, as timm offers), followed by
    CLIP's bias-free linear projection to ``embed_dim``.

    Args:
        model_name: a timm model name (``vit_base_patch16_224``, ``resnet50``, ...).
        embed_dim: size of the shared image-text embedding.
        image_size: input side for models that take ``img_size`` (ViT, Mixer).
        global_pool: timm's pooling option; None = the model's default.
        proj: ``linear`` (CLIP), ``mlp`` or ``none``.
        pretrained_path: a local timm checkpoint file (nothing is downloaded).
        init: ``timm`` keeps timm's initialisation (truncated normal 0.02 for ViTs);
            ``clip`` re-initialises as open_clip's VisionTransformer: PyTorch's default
            init for linear and convolution layers, attention as nn.MultiheadAttention
            (xavier-uniform in-projection, zero biases), class token, position
            embedding and projection N(0, width^-0.5). Ignored with pretrained weights.
        model_kwargs: extra keyword arguments for ``timm.create_model``
            (``depth``, ``embed_dim``, ``num_heads``, ``patch_size``, ``drop_path_rate``, ...).
        mask_ratio: FLIP patch masking in training (vlp.towers.masking.PatchMask): the
            share of patch tokens dropped per image, 0 = none. Needs a timm ViT (a model
            with timm's ``patch_drop`` slot); other towers refuse a ratio above 0.

    Input ``[B, 3, H, W]``; output ``pooled [B, embed_dim]``, ``tokens`` = ``forward_features``.
    """

    def __init__(
        self,
        model_name: str,
        embed_dim: int = 512,
        image_size: int | None = None,
        global_pool: str | None = None,
        proj: Projection = "linear",
        pretrained_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        init: Literal["timm", "clip"] = "timm",
        mask_ratio: float = 0.0,
    ):
        super().__init__()
        kwargs = dict(model_kwargs or {})
        kwargs["num_classes"] = 0
        if image_size is not None:
            kwargs["img_size"] = image_size
        if global_pool is not None:
            kwargs["global_pool"] = global_pool
        if pretrained_path is not None:
            if not Path(pretrained_path).is_file():
                raise VLPError(f"pretrained image tower file not found: {pretrained_path}")
            kwargs["pretrained"] = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=4)
            raise VLPError(f"unknown timm model '{model_name}'" + (f"; close: {', '.join(close)}" if close else ""))
        try:
            self.trunk = timm.create_model(model_name, **kwargs)
        except TypeError as e:
            raise VLPError(f"timm model '{model_name}' rejects its arguments {sorted(kwargs)}: {e}") from None
        self.width = self.trunk.num_features
        self.proj = make_projection(proj, self.width, embed_dim)
        if init == "clip" and pretrained_path is None:
            clip_init(self.trunk, self.width)
            if isinstance(self.proj, nn.Linear):
                nn.init.normal_(self.proj.weight, std=self.width**-0.5)
        self.embed_dim = embed_dim
        self.mask: PatchMask | None = None
        if hasattr(self.trunk, "patch_drop") and hasattr(self.trunk, "num_prefix_tokens"):
            if mask_ratio > 0 and kwargs.get("patch_drop_rate"):
                raise VLPError("give FLIP masking as image_tower.mask_ratio, not also timm's patch_drop_rate")
            if not isinstance(self.trunk.patch_drop, nn.Identity) and not mask_ratio:
                return  # timm's own PatchDropout stays as configured
            self.mask = PatchMask(0.0, self.trunk.num_prefix_tokens)
            self.trunk.patch_drop = self.mask
        if mask_ratio:
            if self.mask is None:
                raise VLPError(f"image tower '{model_name}' cannot mask patches (FLIP): mask_ratio needs a timm "
                               "Vision Transformer (vit_*, deit_*, ...); ResNet, ConvNeXt, EfficientNet and "
                               "MLP-Mixer towers have no token sequence to drop from")
            try:
                self.mask.ratio = mask_ratio
            except ValueError as e:
                raise VLPError(f"image_tower.mask_ratio: {e}") from None

    @property
    def mask_ratio(self) -> float:
        return self.mask.ratio if self.mask is not None else 0.0

    @mask_ratio.setter
    def mask_ratio(self, value: float) -> None:
        if self.mask is None:
            if value:
                raise VLPError("this image tower cannot mask patches")
            return
        self.mask.ratio = value

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.trunk.forward_features(image)
        pooled = self.trunk.forward_head(tokens, pre_logits=True)
        return {"pooled": self.proj(pooled), "tokens": tokens}

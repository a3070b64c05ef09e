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
from vlp.towers.output import TowerOutput
from vlp.towers.pooled import first_token_block_class, timm_block_supported
from vlp.towers.projection import Projection, make_projection
from vlp.towers.recompute import call_block


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
        init_from: a vlp checkpoint (``.ckpt`` of `vlp fit`) whose image tower weights are
            loaded (same architecture), e.g. the image tower of an earlier SLIP run.
        lock: LiT (Zhai et al. 2022): freeze the trunk; its parameters get no gradient and
            stay out of the optimiser. Needs pretrained weights (``pretrained_path`` or
            ``init_from``).
        unlocked_groups: with ``lock``, leave the last N of timm's layer groups trainable
            (for a ViT: the last N blocks, the final norm going with the last one).
        freeze_bn_stats: with ``lock``, batch-norm layers of the locked part stay in eval
            mode, so their running statistics do not move.
        head: with ``lock``, ``new`` = a fresh trainable projection (LiT's default);
            ``keep`` = the projection loaded from ``init_from``, locked too.
        grad_checkpointing: activation checkpointing of the trunk's blocks (timm's
            ``set_grad_checkpointing``; the pooled-only pass checkpoints its blocks the same
            way): less activation memory for one more forward pass of the blocks in the
            backward, the same gradients (dropout and drop path replay their random state; FLIP
            masking happens before the blocks). A CNN's batch-norm running statistics are
            updated again in the recomputation. Refused for a timm model without it;
            ``set_grad_checkpointing(enable)`` switches it later.

    Input ``[B, 3, H, W]``; output (TowerOutput) ``pooled [B, embed_dim]``, ``features [B, width]``
    (pooled, before the projection), ``tokens [B, N, tokens_width]`` (``forward_features``; a
    CNN's map flattened) with ``token_mask`` (all True), ``prefix_tokens`` (timm's
    ``num_prefix_tokens``), the patch ``grid`` ``(h, w)`` (a CNN's map size) and, under FLIP
    masking, the ``kept`` grid positions.
    """

    input_ndim = 4  # [B, 3, H, W]

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
        init_from: str | None = None,
        lock: bool = False,
        unlocked_groups: int = 0,
        freeze_bn_stats: bool = True,
        head: Literal["new", "keep"] = "new",
        grad_checkpointing: bool = False,
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
        if grad_checkpointing:
            self.set_grad_checkpointing(True)
        self.width = self.trunk.num_features
        self.tokens_width = self.width  # of ``tokens`` (a pooler may make ``features`` of another width)
        self.proj = make_projection(proj, self.width, embed_dim)
        if init == "clip" and pretrained_path is None and init_from is None:
            clip_init(self.trunk, self.width)
            if isinstance(self.proj, nn.Linear):
                nn.init.normal_(self.proj.weight, std=self.width**-0.5)
        self.embed_dim = embed_dim
        self.mask: PatchMask | None = None
        if hasattr(self.trunk, "patch_drop") and hasattr(self.trunk, "num_prefix_tokens"):
            if mask_ratio > 0 and kwargs.get("patch_drop_rate"):
                raise VLPError("give FLIP masking as image_tower.mask_ratio, not also timm's patch_drop_rate")
            if isinstance(self.trunk.patch_drop, nn.Identity):  # else timm's own PatchDropout stays
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

        if init_from is not None:
            self._load_vlp_tower(init_from, keep_proj=head == "keep")
        elif head == "keep":
            raise VLPError("image_tower.head keep takes the projection from init_from (a vlp checkpoint)")
        self.locked = lock
        self._token_sequence = hasattr(self.trunk, "num_prefix_tokens")  # a ViT-like trunk
        self._prepare_pooled_path()
        self.freeze_bn_stats = freeze_bn_stats
        if lock:
            if pretrained_path is None and init_from is None:
                raise VLPError("image_tower.lock freezes pretrained weights: give pretrained_path (a timm checkpoint) "
                               "or init_from (a vlp checkpoint)")
            self._lock(unlocked_groups, lock_proj=head == "keep")
        elif unlocked_groups:
            raise VLPError("image_tower.unlocked_groups needs lock: true")

    @classmethod
    def inference_args(cls, init_args: dict) -> dict:
        """``init_args`` without what only training needs (vlp.inference.load): the weights come
        from the checkpoint, so no pretrained file or ``init_from`` is read and nothing is locked."""
        dropped = {"pretrained_path": None, "init_from": None, "lock": False, "unlocked_groups": 0, "head": "new"}
        return {**init_args, **{k: v for k, v in dropped.items() if k in init_args}}

    def _load_vlp_tower(self, path: str, keep_proj: bool) -> None:
        from vlp.inference import part_state

        try:
            tower = part_state(path, "towers.image")  # any checkpoint vlp.inference reads
        except VLPError as e:
            raise VLPError(f"image_tower.init_from: {e}") from None
        if not keep_proj:
            tower = {k: v for k, v in tower.items() if not k.startswith("proj.")}
        result = self.load_state_dict(tower, strict=False)
        missing = [k for k in result.missing_keys if keep_proj or not k.startswith("proj.")]
        if missing or result.unexpected_keys:
            raise VLPError(f"image_tower.init_from: {path} does not fit this tower (missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}): same model_name and model_kwargs needed")

    def _lock(self, unlocked_groups: int, lock_proj: bool) -> None:
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        if lock_proj:
            for p in self.proj.parameters():
                p.requires_grad_(False)
        if unlocked_groups:
            matcher = getattr(self.trunk, "group_matcher", None)
            if matcher is None:
                raise VLPError("image_tower.unlocked_groups: this timm model defines no layer groups")
            from timm.models import group_parameters

            groups = group_parameters(self.trunk, matcher(coarse=True))
            params = dict(self.trunk.named_parameters())
            for gid in sorted(groups)[-unlocked_groups:]:
                for name in groups[gid]:
                    params[name].requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and getattr(self, "locked", False) and self.freeze_bn_stats:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in m.parameters(recurse=False)):
                    m.eval()
        return self

    @property
    def grad_checkpointing(self) -> bool:
        return bool(getattr(self.trunk, "grad_checkpointing", False))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of the trunk's blocks on or off (timm's switch)."""
        try:
            self.trunk.set_grad_checkpointing(enable)
        except (AssertionError, AttributeError, NotImplementedError, RuntimeError) as e:
            raise VLPError(f"timm model '{type(self.trunk).__name__}' has no gradient checkpointing "
                           f"(image_tower.grad_checkpointing): {e or type(e).__name__}") from None

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

    def _prepare_pooled_path(self) -> None:
        """A plain class-token timm ViT gets a last block that can run at the class token only
        (vlp.towers.pooled.first_token_block_class: same parameters, a subclass of timm's Block)."""
        t = self.trunk
        blocks = getattr(t, "blocks", None)
        if (getattr(t, "global_pool", None) == "token" and getattr(t, "attn_pool", None) is None
                and getattr(t, "cls_token", None) is not None
                and isinstance(blocks, nn.Sequential) and len(blocks) > 0 and timm_block_supported(blocks[-1])
                and all(hasattr(t, n) for n in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "norm"))):
            blocks[-1].__class__ = first_token_block_class()

    def _class_token_path(self) -> bool:
        """Whether the last block can run at the class token only (see _prepare_pooled_path)."""
        blocks = getattr(self.trunk, "blocks", None)
        return (isinstance(blocks, nn.Sequential) and len(blocks) > 0
                and isinstance(blocks[-1], first_token_block_class()))

    def shard_units(self) -> list[nn.Module]:
        """The trunk's transformer blocks (ViT, Mixer), each its own sharding unit; none for CNNs."""
        blocks = getattr(self.trunk, "blocks", None)
        return list(blocks) if isinstance(blocks, (nn.Sequential, nn.ModuleList)) else []

    @property
    def prefix_tokens(self) -> int:
        """Leading non-content tokens of ``tokens``: timm's class and register tokens (ViT),
        0 for a CNN."""
        return int(getattr(self.trunk, "num_prefix_tokens", 0) or 0) if self._token_sequence else 0

    def forward(self, image: torch.Tensor, tokens: bool = True) -> TowerOutput:
        """``tokens=False``: no ``tokens`` in the output, and a class-token ViT runs its last
        block at the class token only (vlp.towers.pooled): same ``pooled`` and ``features``,
        less work. A CNN's tokens are its last feature map ``[B, C, H, W]`` flattened to
        ``[B, H*W, C]``."""
        t = self.trunk
        if not tokens and self._class_token_path():
            x = t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(image))))
            ckpt = self.grad_checkpointing  # as timm's forward_features
            for block in t.blocks[:-1]:
                x = call_block(block, x, recompute=ckpt)
            x = t.norm(call_block(t.blocks[-1], x, recompute=ckpt, first_token_only=True))
            features = t.forward_head(x, pre_logits=True)
            return TowerOutput(self.proj(features), features, prefix_tokens=self.prefix_tokens)
        hidden = t.forward_features(image)
        features = t.forward_head(hidden, pre_logits=True)
        if not tokens:
            return TowerOutput(self.proj(features), features, prefix_tokens=self.prefix_tokens)
        return TowerOutput(self.proj(features), features, **self.token_outputs(hidden, image))

    def token_outputs(self, hidden: torch.Tensor, image: torch.Tensor) -> dict:
        """The trunk's ``forward_features`` output as TowerOutput's token fields: ``tokens [B, N,
        W]`` (a CNN's map ``[B, C, h, w]`` flattened row-major), ``token_mask``,
        ``prefix_tokens``, ``grid`` and (FLIP) ``kept``."""
        if hidden.ndim == 4:  # a CNN's feature map
            grid = tuple(hidden.shape[2:])
            hidden = hidden.flatten(2).transpose(1, 2)
        else:  # a ViT's patch embedding (a Mixer's stem) knows the grid of an image of this size
            embed = getattr(self.trunk, "patch_embed", None) or getattr(self.trunk, "stem", None)
            if callable(getattr(embed, "dynamic_feat_size", None)):
                grid = tuple(embed.dynamic_feat_size(tuple(image.shape[-2:])))
            else:
                grid = tuple(embed.grid_size) if getattr(embed, "grid_size", None) is not None else None
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        kept = self.mask.kept if self.mask is not None else None
        return {"tokens": hidden, "token_mask": mask, "prefix_tokens": self.prefix_tokens, "grid": grid,
                "kept": kept}


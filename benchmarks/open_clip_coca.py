"""vlp's CoCa as an open_clip CoCa with the same weights (for benchmarks/coca_generation.py and
tests/test_coca_open_clip.py; not part of the vlp package).

    from open_clip_coca import build_open_clip_coca, open_clip_greedy
    oc = build_open_clip_coca(module)          # module: a VLPModule of a coca_* recipe

``open_clip_config(module)`` reads the shapes of vlp's towers (CoCaImageTower on a timm ViT,
CoCaTextTower, CaptioningLoss's decoder) and gives open_clip.coca_model.CoCa's arguments;
``open_clip_state_dict(module)`` maps vlp's weights to that model's keys. Same function, with
three adjustments that ``build_open_clip_coca`` makes (open_clip 3.3.0):

1. Image tower, pooling LayerNorms. vlp: ``hidden = trunk.norm(blocks(x))`` (timm's final
   norm, inside ``forward_features``), then ``tokens = ln_post(attn_pool(hidden))`` and
   ``pooled = proj(ln_post(attn_pool_contrastive(hidden)))``: one LayerNorm before the
   poolers and one (shared) after them. open_clip's ``attentional_pool='parallel'``:
   ``x = ln_post(x)``, then ``tokens = attn_pool(x)``, ``pooled = attn_pool_contrastive(x) @
   proj``: the LayerNorm before the poolers only. So timm's ``trunk.norm`` maps to open_clip's
   ``visual.ln_post``, and vlp's ``ln_post`` has no place in open_clip: it is added after each
   of open_clip's two poolers (``visual.attn_pool = Sequential(AttentionalPooler, LayerNorm)``,
   the same for ``attn_pool_contrastive``, one shared LayerNorm, keys ``attn_pool.0.*`` /
   ``attn_pool.1.*``). Without it the models differ even at init (a LayerNorm is not the
   identity). Cost in open_clip: one LayerNorm over ``pool_queries + 1`` tokens per image.
   (vlp's CoCaImageTower docstring calls its ``ln_post`` "open_clip's ``ln_post`` after the
   pooler": true of open_clip's non-parallel CoCa pooling, not of ``'parallel'``.)
2. Image tower, LayerNorm eps: timm's ViT uses 1e-6, open_clip 1e-5 (its default):
   ``vision_cfg.norm_kwargs = {eps: 1e-6}`` (open_clip's own config key; the poolers' own
   ln_q / ln_k keep 1e-5 in both).
3. Text tower, class-token mask: open_clip's config cannot set ``correct_cls_mask``, so a
   config-built CoCa uses its legacy padding mask (shifted by one position: the flag of token
   ``j - 1`` masks key ``j``). vlp implements the corrected one; ``model.text.correct_cls_mask
   = True`` is set. Remaining difference, by design, with padding only: a padding query
   attends to itself in vlp (no empty attention rows) and not in open_clip; the states and
   logits at padding positions differ, every real position (and the class token) is equal.
   Generation feeds no padding (open_clip pads ended rows but discards their logits).

Everything else maps one to one (timm ``qkv`` = nn.MultiheadAttention ``in_proj`` in q, k, v
order; vlp's cross-attention ``q`` and ``kv`` concatenated to ``in_proj``; bias-free projections
transposed); the patch embedding has no bias in both (timm ``pre_norm=True``).

Generation. open_clip 3.3.0's ``CoCa.generate`` is disabled with transformers >= 5 (its import
of ``BeamSearchScorer``, removed in transformers 5, fails, so ``_has_transformers`` is False
and every generation type asserts): ``enable_open_clip_generate()`` re-enables the sampling
types (greedy = ``generation_type='top_k', top_k=1``), whose classes imported fine; beam search
stays unavailable. vlp never generates the pad and start ids; open_clip has no such rule, so
``open_clip_greedy`` masks those two logits of open_clip's decoder (a forward hook) for the
comparison.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def _parts(module):
    """(image tower, text tower, caption decoder head, contrastive logit scale or None) of a VLPModule."""
    if "decoder" not in module.heads:
        raise ValueError("expected a module with a caption decoder head named decoder")
    decoder = module.heads["decoder"]
    image = module.towers[module.share.get(decoder.image, decoder.image)]
    text = module.towers[module.share.get(decoder.text, decoder.text)]
    scale = next((o.logit_scale for o in module.objectives if set(getattr(o, "compares", ())) == {"image", "text"}),
                 None)
    return image, text, decoder, scale


def open_clip_config(module) -> dict:
    """Keyword arguments of open_clip.coca_model.CoCa with the shapes of vlp's CoCa ``module``."""
    from vlp.towers import CoCaImageTower, CoCaTextTower

    image, text, decoder, _ = _parts(module)
    if not isinstance(image, CoCaImageTower) or not isinstance(text, CoCaTextTower):
        raise ValueError("expected vlp.towers.CoCaImageTower and CoCaTextTower")
    trunk = image.trunk
    if not (hasattr(trunk, "patch_embed") and getattr(trunk, "cls_token", None) is not None
            and isinstance(trunk.norm_pre, nn.LayerNorm) and isinstance(trunk.norm, nn.LayerNorm)
            and getattr(trunk, "num_reg_tokens", 0) == 0 and not getattr(trunk, "no_embed_class", False)
            and trunk.patch_embed.proj.bias is None):
        raise ValueError("open_clip's VisionTransformer matches a timm ViT with a class token, pre_norm=True "
                         "(norm_pre, no patch bias), a final norm and no register tokens")
    width = trunk.embed_dim
    if not (image.width == width == image.embed_dim == text.width == decoder.width):
        raise ValueError(f"open_clip's parallel attentional pooling and decoder need one width: trunk {width}, "
                         f"pool {image.width}, embed {image.embed_dim}, text {text.width}, decoder {decoder.width}")
    if not isinstance(image.proj, nn.Linear) or not isinstance(text.proj, nn.Linear):
        raise ValueError("linear projections expected")
    block = trunk.blocks[0]
    heads = block.attn.num_heads
    mlp_ratio = block.mlp.fc1.out_features / width
    text_mlp = text.blocks[0].mlp[0].out_features / text.width
    dec_mlp = decoder.blocks[0].mlp[0].out_features / decoder.width
    return dict(
        embed_dim=image.embed_dim,
        vision_cfg=dict(
            image_size=trunk.patch_embed.img_size[0], patch_size=trunk.patch_embed.patch_size[0], width=width,
            layers=len(trunk.blocks), head_width=width // heads, mlp_ratio=mlp_ratio,
            attentional_pool="parallel", attn_pooler_queries=image.attn_pool.query.shape[0],
            attn_pooler_heads=image.attn_pool.attn.num_heads, output_tokens=True,
            norm_kwargs={"eps": trunk.norm.eps},
        ),
        text_cfg=dict(
            context_length=text.context_length, vocab_size=text.vocab_size, width=text.width,
            heads=text.blocks[0].attn.heads, layers=len(text.blocks), mlp_ratio=text_mlp, embed_cls=True,
            output_tokens=True, pad_id=text.pad_id,
        ),
        multimodal_cfg=dict(
            context_length=text.context_length, width=decoder.width, heads=decoder.blocks[0].attn.heads,
            layers=len(decoder.blocks), mlp_ratio=dec_mlp,
        ),
        pad_id=text.pad_id,
    )


def _block(out: dict, dst: str, ln_1, qkv_w, qkv_b, out_lin, ln_2, fc1, fc2) -> None:
    """One open_clip ResidualAttentionBlock's weights."""
    out.update({
        f"{dst}.ln_1.weight": ln_1.weight, f"{dst}.ln_1.bias": ln_1.bias,
        f"{dst}.attn.in_proj_weight": qkv_w, f"{dst}.attn.in_proj_bias": qkv_b,
        f"{dst}.attn.out_proj.weight": out_lin.weight, f"{dst}.attn.out_proj.bias": out_lin.bias,
        f"{dst}.ln_2.weight": ln_2.weight, f"{dst}.ln_2.bias": ln_2.bias,
        f"{dst}.mlp.c_fc.weight": fc1.weight, f"{dst}.mlp.c_fc.bias": fc1.bias,
        f"{dst}.mlp.c_proj.weight": fc2.weight, f"{dst}.mlp.c_proj.bias": fc2.bias,
    })


def open_clip_state_dict(module) -> dict[str, torch.Tensor]:
    """vlp's CoCa weights under the keys of the open_clip CoCa that ``build_open_clip_coca``
    makes (open_clip's keys, with ``visual.attn_pool{,_contrastive}.{0,1}.*`` for the pooler and
    the post-pool LayerNorm, see the module docstring). Tensors are detached copies."""
    image, text, decoder, scale = _parts(module)
    t = image.trunk
    sd: dict[str, torch.Tensor] = {
        "visual.conv1.weight": t.patch_embed.proj.weight,
        "visual.class_embedding": t.cls_token.reshape(-1),
        "visual.positional_embedding": t.pos_embed[0],
        "visual.ln_pre.weight": t.norm_pre.weight, "visual.ln_pre.bias": t.norm_pre.bias,
        "visual.ln_post.weight": t.norm.weight, "visual.ln_post.bias": t.norm.bias,  # before the poolers
        "visual.proj": image.proj.weight.T,
    }
    for i, b in enumerate(t.blocks):
        _block(sd, f"visual.transformer.resblocks.{i}", b.norm1, b.attn.qkv.weight, b.attn.qkv.bias, b.attn.proj,
               b.norm2, b.mlp.fc1, b.mlp.fc2)
    for name in ("attn_pool", "attn_pool_contrastive"):
        for key, value in getattr(image, name).state_dict().items():  # the same AttentionalPooler
            sd[f"visual.{name}.0.{key}"] = value
        sd[f"visual.{name}.1.weight"], sd[f"visual.{name}.1.bias"] = image.ln_post.weight, image.ln_post.bias
    sd.update({
        "text.token_embedding.weight": text.token_embedding.weight,
        "text.positional_embedding": text.positional_embedding,
        "text.cls_emb": text.cls_emb,
        "text.ln_final.weight": text.ln_final.weight, "text.ln_final.bias": text.ln_final.bias,
        "text.text_projection": text.proj.weight.T,
    })
    for i, b in enumerate(text.blocks):
        _block(sd, f"text.transformer.resblocks.{i}", b.ln_1, b.attn.qkv.weight, b.attn.qkv.bias, b.attn.out, b.ln_2,
               b.mlp[0], b.mlp[2])
    for i, (b, c) in enumerate(zip(decoder.blocks, decoder.cross)):
        _block(sd, f"text_decoder.resblocks.{i}", b.ln_1, b.attn.qkv.weight, b.attn.qkv.bias, b.attn.out, b.ln_2,
               b.mlp[0], b.mlp[2])
        _block(sd, f"text_decoder.cross_attn.{i}", c.ln_1, torch.cat([c.q.weight, c.kv.weight]),
               torch.cat([c.q.bias, c.kv.bias]), c.out, c.ln_2, c.mlp[0], c.mlp[2])
        sd[f"text_decoder.cross_attn.{i}.ln_1_kv.weight"] = c.ln_1_kv.weight
        sd[f"text_decoder.cross_attn.{i}.ln_1_kv.bias"] = c.ln_1_kv.bias
    sd["text_decoder.ln_final.weight"], sd["text_decoder.ln_final.bias"] = decoder.ln_final.weight, decoder.ln_final.bias
    sd["text_decoder.text_projection"] = decoder.head.weight.T
    sd["logit_scale"] = (scale if scale is not None else torch.tensor(0.0)).reshape(())
    return {k: v.detach().clone() for k, v in sd.items()}


def build_open_clip_coca(module, device: torch.device | str | None = None):
    """An open_clip CoCa (eval mode, fp32) computing vlp's CoCa ``module`` (adjustments: module
    docstring)."""
    from open_clip.coca_model import CoCa

    cfg = open_clip_config(module)
    model = CoCa(**cfg)
    v = model.visual
    post = nn.LayerNorm(v.output_dim)  # vlp's ln_post (eps 1e-5), shared by both poolers
    v.attn_pool = nn.Sequential(v.attn_pool, post)
    v.attn_pool_contrastive = nn.Sequential(v.attn_pool_contrastive, post)
    model.text.correct_cls_mask = True
    model.load_state_dict(open_clip_state_dict(module), strict=True)
    device = device if device is not None else next(module.parameters()).device
    return model.to(device).eval()


def enable_open_clip_generate() -> None:
    """Re-enable open_clip 3.3.0's sampling generation under transformers >= 5 (module docstring)."""
    import open_clip.coca_model as cm

    if cm._has_transformers:
        return
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    missing = [n for n in ("LogitsProcessorList", "MinLengthLogitsProcessor", "RepetitionPenaltyLogitsProcessor",
                           "MaxLengthCriteria", "StoppingCriteriaList") if not hasattr(cm, n)]
    if missing:
        raise RuntimeError(f"open_clip.coca_model lacks {missing}: cannot enable generate")
    cm.GENERATION_TYPES.update(top_k=TopKLogitsWarper, top_p=TopPLogitsWarper)
    cm._has_transformers = True


@contextmanager
def banned_logits(model, ids: list[int]):
    """Meanwhile open_clip's decoder gives -inf logits for ``ids`` (vlp never generates them)."""
    def hook(_mod, _inp, out):
        out[..., ids] = float("-inf")
        return out
    handle = model.text_decoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def open_clip_greedy(model, images: torch.Tensor, spec, max_length: int, min_length: int = 0,
                     exact_length: bool = False) -> torch.Tensor:
    """open_clip's own ``generate`` in greedy mode (``top_k`` with ``top_k=1``), ids laid out as
    vlp's ``Captions.ids`` for ``Captioner.generate(images, "greedy", max_length=max_length,
    min_length=min_length)``: ``[B, <= max_length + 1]``, start id, caption, end id, pad id.

    open_clip's ``seq_len`` counts the start token and forces the end id as its last token, so
    it runs with ``seq_len = max_length + 2`` and its last column is dropped: the same
    ``max_length`` free tokens as vlp. ``exact_length`` (speed runs): ``seq_len = max_length + 1``
    and the end id banned until then, so every row takes exactly ``max_length`` decoder steps
    (the last token is open_clip's forced end id); the ids are returned as they are.
    """
    enable_open_clip_generate()
    seq_len = max_length + 1 if exact_length else max_length + 2
    min_seq_len = max_length if exact_length else min_length + 1  # HF: bans the end while len(ids) < this
    with banned_logits(model, [spec.pad_id, spec.bos_id]):
        out = model.generate(images, seq_len=seq_len, max_seq_len=model.text.context_length, temperature=1.0,
                             generation_type="top_k", top_k=1, pad_token_id=spec.pad_id, eos_token_id=spec.eos_id,
                             sot_token_id=spec.bos_id, min_seq_len=min_seq_len)
    if exact_length:
        return out
    out = out[:, : max_length + 1]
    used = int((out != spec.pad_id).sum(1).max())
    return out[:, :used]


def same_rows(a: torch.Tensor, b: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``[B]`` bool: row ``i`` of ``a`` equals row ``i`` of ``b`` after right-padding both to one width."""
    width = max(a.shape[1], b.shape[1])
    pa = torch.nn.functional.pad(a, (0, width - a.shape[1]), value=pad_id)
    pb = torch.nn.functional.pad(b, (0, width - b.shape[1]), value=pad_id)
    return (pa == pb).all(1)


@torch.no_grad()
def compare_forward(module, oc, images: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """Max |difference| of vlp's and open_clip's next-token logits at the real (non-pad) input
    positions of ``text [B, L]`` (the caption decoder's teacher-forced pass, as in training), and
    of the image and text embeddings (before normalisation)."""
    _, text_tower, decoder, _ = _parts(module)
    module.eval()
    img = module.run_tower("image", images, tokens=True)
    txt = text_tower(text)
    ours = decoder(txt.tokens[:, :-1], *decoder.context(img))
    theirs = oc(images, text)["logits"]
    real = (text[:, :-1] != text_tower.pad_id)
    oc_img, _ = oc._encode_image(images, normalize=False)
    oc_img = oc_img.reshape(img.pooled.shape)  # open_clip's parallel pooling keeps the query axis: [B, 1, E]
    oc_txt, _ = oc._encode_text(text, normalize=False)
    return {
        "logits": (ours - theirs)[real].abs().max().item(),
        "logits_scale": ours[real].abs().max().item(),
        "image_embedding": (img.pooled - oc_img).abs().max().item(),
        "text_embedding": (txt.pooled - oc_txt).abs().max().item(),
    }

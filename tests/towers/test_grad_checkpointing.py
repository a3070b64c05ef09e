"""The towers' ``grad_checkpointing`` option (activation checkpointing of their blocks): the same
outputs and gradients as without it, in the full and the pooled-only pass, with dropout, drop
path and FLIP masking on; the blocks really run again in the backward."""

import pytest
import torch

from vlp.errors import VLPError
from vlp.towers import CoCaImageTower, CoCaTextTower, HFTextTower, TextTransformer, TimmImageTower

# dropout, attention dropout and drop path on: the recomputation must replay their random draws
VIT = dict(patch_size=8, embed_dim=64, depth=3, num_heads=2, proj_drop_rate=0.1, attn_drop_rate=0.1,
           drop_path_rate=0.2)
BERT = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 16,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
TEXT = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0], [1, 7, 7, 7, 7, 7, 7, 2], [1, 2, 0, 0, 0, 0, 0, 0]])

TOWERS = {  # name -> (factory taking grad_checkpointing, input, the block list to count calls of)
    "vit": (lambda ckpt: TimmImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, model_kwargs=VIT,
                                        grad_checkpointing=ckpt), "image", lambda t: t.trunk.blocks),
    "vit_flip": (lambda ckpt: TimmImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, model_kwargs=VIT,
                                             mask_ratio=0.5, grad_checkpointing=ckpt), "image",
                 lambda t: t.trunk.blocks),
    "vit_avg": (lambda ckpt: TimmImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32,
                                            model_kwargs={**VIT, "global_pool": "avg"}, grad_checkpointing=ckpt),
                "image", lambda t: t.trunk.blocks),
    "coca_image": (lambda ckpt: CoCaImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, model_kwargs=VIT,
                                               pool_queries=4, pool_heads=2, grad_checkpointing=ckpt), "image",
                   lambda t: t.trunk.blocks),
    "resnet": (lambda ckpt: TimmImageTower("resnet18", embed_dim=16, grad_checkpointing=ckpt), "image", None),
    "text": (lambda ckpt: TextTransformer(vocab_size=50, context_length=8, width=32, layers=3, heads=2, embed_dim=16,
                                          grad_checkpointing=ckpt), "text", lambda t: t.blocks),
    "text_bidirectional": (lambda ckpt: TextTransformer(vocab_size=50, context_length=8, width=32, layers=3, heads=2,
                                                        embed_dim=16, causal=False, grad_checkpointing=ckpt), "text",
                           lambda t: t.blocks),
    "coca_text": (lambda ckpt: CoCaTextTower(vocab_size=50, context_length=8, width=32, layers=3, heads=2,
                                             embed_dim=16, grad_checkpointing=ckpt), "text", lambda t: t.blocks),
    "hf_bert": (lambda ckpt: HFTextTower(config=BERT, embed_dim=16, pad_id=0, grad_checkpointing=ckpt), "text",
                # transformers (5) checkpoints a layer's forward, inside its hooks: count its attention
                lambda t: [t.transformer.encoder.layer[0].attention]),
}


def _input(kind):
    if kind == "text":
        return TEXT
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _step(tower, x, tokens: bool):
    """Outputs and every parameter's gradient of one training pass from a fixed random state."""
    tower.zero_grad()
    torch.manual_seed(7)
    out = tower(x, tokens=tokens)
    loss = (out.pooled * torch.linspace(-1, 1, out.pooled.numel()).view_as(out.pooled)).sum()
    if out.tokens is not None:
        loss = loss + (out.tokens * torch.linspace(-1, 1, out.tokens.numel()).view_as(out.tokens)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("tokens", [True, False], ids=["full", "pooled_only"])
@pytest.mark.parametrize("name", list(TOWERS))
def test_grad_checkpointing_gives_the_same_gradients(name, tokens):
    factory, kind, blocks = TOWERS[name]
    torch.manual_seed(0)
    plain = factory(False).train()
    checkpointed = factory(True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = _input(kind)

    counts = {"plain": 0, "checkpointed": 0}
    if blocks is not None:  # the first block starts once without and twice with checkpointing
        for key, tower in (("plain", plain), ("checkpointed", checkpointed)):
            # a pre-hook: the recomputation stops once it has what the backward needs (torch's
            # early stop), before the block's forward returns
            blocks(tower)[0].register_forward_pre_hook(lambda *_, key=key: counts.__setitem__(key, counts[key] + 1))
    out_a, grads_a = _step(plain, x, tokens)
    out_b, grads_b = _step(checkpointed, x, tokens)
    if blocks is not None:
        assert counts == {"plain": 1, "checkpointed": 2}, counts

    assert torch.allclose(out_a.pooled, out_b.pooled, atol=1e-6, rtol=0)
    assert (out_a.tokens is None) == (out_b.tokens is None)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], atol=1e-6, rtol=0), (name, n)


def test_image_tower_keeps_the_pooled_only_path_under_checkpointing():
    tower = TOWERS["vit"][0](True)
    assert tower.trunk.grad_checkpointing and tower._class_token_path()


def test_checkpointing_is_skipped_without_autograd():
    tower = TOWERS["text"][0](True).train()
    calls = []
    tower.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        tower(TEXT)
    assert len(calls) == 1


def test_a_recipe_sets_it_per_tower():
    from tests.conftest import TINY
    from vlp.cli import run_cli

    cli = run_cli(["--recipe", "clip_tiny", *TINY, "--trainer.logger", "false",
                   "--model.towers.image.grad_checkpointing", "true", "--model.towers.text.grad_checkpointing", "true"],
                  run=False)
    assert cli.model.towers["image"].trunk.grad_checkpointing and cli.model.towers["text"].grad_checkpointing


def test_a_model_without_checkpointing_is_refused(monkeypatch):
    from timm.models import resnet

    def refuse(self, enable=True):
        assert not enable, "gradient checkpointing not supported"

    monkeypatch.setattr(resnet.ResNet, "set_grad_checkpointing", refuse)
    with pytest.raises(VLPError, match="has no gradient checkpointing"):
        TimmImageTower("resnet18", embed_dim=16, grad_checkpointing=True)


def test_model_flops_leave_out_the_recomputation():
    from vlp.callbacks.throughput import meta_copy, training_flops
    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss

    def flops(ckpt: bool) -> int:
        image = TimmImageTower("vit_tiny_patch16_224", embed_dim=16, image_size=32, model_kwargs=VIT,
                               grad_checkpointing=ckpt)
        module = VLPModule({"image": image, "text": TOWERS["text"][0](ckpt)}, [ContrastiveLoss()])
        batch = {"image": _input("image"), "text": TEXT}
        meta = meta_copy(module)
        assert not meta.towers["image"].grad_checkpointing and not meta.towers["text"].grad_checkpointing
        assert module.towers["image"].grad_checkpointing == ckpt  # the original keeps its setting
        return training_flops(meta, batch)

    assert flops(True) == flops(False) > 0


def test_gradient_cache_with_checkpointed_towers_gives_the_same_gradients():
    """GradCacheStep replays each chunk's random state; the checkpoints inside replay it again."""
    from tests.test_grad_cache import assert_same, batch_of, cached, chunked_reference

    batch = batch_of(12)
    torch.manual_seed(7)
    expected = chunked_reference(tiny_cache_module(False), batch, 4)
    torch.manual_seed(7)
    assert_same(cached(tiny_cache_module(True), batch, 4), expected)


def tiny_cache_module(ckpt: bool):
    from tests.test_grad_cache import tiny

    module = tiny(dropout=0.2, mask_ratio=0.5)
    for tower in module.towers.values():
        tower.set_grad_checkpointing(ckpt)
    return module

"""The pooled-only forward (last block at the pooled token) is the same function as the full pass."""

import pytest
import torch

from vlp.towers import TextTransformer, TimmImageTower

VIT = dict(patch_size=8, embed_dim=64, depth=2, num_heads=2)


def _grads(module, out):
    module.zero_grad()
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _same(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=1e-4), name


@pytest.mark.parametrize("kwargs", [
    {},
    {"qkv_bias": False, "qk_norm": True},
    {"reg_tokens": 2, "init_values": 0.1},
])
def test_class_token_vit_pooled_path_equals_the_full_pass(kwargs):
    torch.manual_seed(0)
    tower = TimmImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, model_kwargs={**VIT, **kwargs})
    assert tower._class_token_path()
    x = torch.randn(3, 3, 32, 32)
    full = tower(x)
    fast = tower(x, tokens=False)
    assert fast.tokens is None and full.tokens.shape[1] == full.prefix_tokens + 16
    assert torch.allclose(fast.pooled, full.pooled, atol=1e-5)
    assert torch.allclose(fast.features, full.features, atol=1e-5)
    g_full, g_fast = _grads(tower, tower(x).pooled), _grads(tower, tower(x, tokens=False).pooled)
    # the last block's query-side weights get gradient from one position in both passes
    _same(g_full, g_fast)


def test_pooled_path_under_flip_masking_draws_the_same_mask():
    torch.manual_seed(0)
    tower = TimmImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, model_kwargs=VIT,
                           mask_ratio=0.5).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    full = tower(x).pooled
    torch.manual_seed(1)
    fast = tower(x, tokens=False).pooled
    assert torch.allclose(fast, full, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", [
    ("vit_tiny_patch16_224", {**VIT, "global_pool": "avg", "img_size": 32}),  # mean of tokens: all needed
    ("resnet18", {}),
])
def test_other_towers_take_the_full_pass(name, kwargs):
    tower = TimmImageTower(name, embed_dim=16, model_kwargs=kwargs).eval()
    assert not tower._class_token_path()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(tower(x, tokens=False).pooled, tower(x).pooled)


@pytest.mark.parametrize("causal", [True, False])
def test_text_pooled_path_equals_the_full_pass(causal):
    torch.manual_seed(0)
    tower = TextTransformer(vocab_size=50, context_length=8, width=32, layers=2, heads=2, embed_dim=16,
                            causal=causal)
    text = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0], [1, 7, 7, 7, 7, 7, 7, 2], [1, 2, 0, 0, 0, 0, 0, 0]])
    full, fast = tower(text), tower(text, tokens=False)
    assert fast.tokens is None and full.tokens is not None
    assert torch.allclose(fast.features, full.features, atol=1e-5)
    assert torch.allclose(fast.pooled, full.pooled, atol=1e-5)
    _same(_grads(tower, tower(text).pooled), _grads(tower, tower(text, tokens=False).pooled))


def test_module_training_loss_and_gradients_match_the_full_pass(tiny_module):
    from vlp.data.tokenizer import TextTokenizer

    tok = TextTokenizer(context_length=16)
    tiny_batch = {"image": torch.randn(6, 3, 32, 32), "text": tok([f"emoji number {i} of six" for i in range(6)])}
    module = tiny_module.train()
    assert module.reads == {"image": {"pooled"}, "text": {"pooled"}}
    torch.manual_seed(3)
    out = module(tiny_batch)
    assert out["image"].tokens is None and out["text"].tokens is None
    fast_loss = module.objectives[0](out, tiny_batch)[0]
    g_fast = _grads(module, fast_loss)
    torch.manual_seed(3)
    out = module(tiny_batch, reads={"image": {"pooled", "tokens"}, "text": {"pooled", "tokens"}})
    assert out["image"].tokens.shape[1] == 1 + 16 and out["text"].tokens.shape[:2] == tiny_batch["text"].shape
    full_loss = module.objectives[0](out, tiny_batch)[0]
    assert torch.allclose(fast_loss, full_loss, atol=1e-6)
    _same(g_fast, _grads(module, full_loss))

"""The tower contract: every tower kind returns one TowerOutput with consistent shapes, tokens
and mask, prefix tokens, and the same pooled output from its pooled-only pass."""

import pytest
import torch

from vlp.towers import CoCaImageTower, CoCaTextTower, HFTextTower, TextTransformer, TimmImageTower
from vlp.towers.output import TowerOutput

VIT = dict(patch_size=8, embed_dim=64, depth=2, num_heads=2)
BERT = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 16}

TOWERS = {  # name -> (class, its arguments, input, expected prefix tokens, expected token count)
    "vit": (TimmImageTower, dict(model_name="vit_tiny_patch16_224", embed_dim=16, image_size=32, model_kwargs=VIT),
            "image", 1, 1 + 16),
    "vit_registers": (TimmImageTower, dict(model_name="vit_tiny_patch16_224", embed_dim=16, image_size=32,
                                           model_kwargs={**VIT, "reg_tokens": 2}), "image", 3, 3 + 16),
    "vit_avg": (TimmImageTower, dict(model_name="vit_tiny_patch16_224", embed_dim=16, image_size=32,
                                     model_kwargs={**VIT, "global_pool": "avg"}), "image", 1, 1 + 16),
    "resnet": (TimmImageTower, dict(model_name="resnet18", embed_dim=16), "image", 0, 1),  # 32 px / 32: a 1 x 1 map
    "resnet_64px": (TimmImageTower, dict(model_name="resnet18", embed_dim=16), "image64", 0, 4),
    "convnext": (TimmImageTower, dict(model_name="convnext_atto", embed_dim=16), "image64", 0, 4),
    "efficientnet": (TimmImageTower, dict(model_name="efficientnet_b0", embed_dim=16), "image64", 0, 4),
    "mixer": (TimmImageTower, dict(model_name="mixer_s32_224", embed_dim=16, image_size=64), "image64", 0, 4),
    "coca_image": (CoCaImageTower, dict(model_name="vit_tiny_patch16_224", embed_dim=16, image_size=32,
                                        model_kwargs=VIT, pool_queries=3, pool_heads=2), "image", 1, 1 + 16),
    "text_causal": (TextTransformer, dict(vocab_size=100, context_length=8, width=32, layers=2, heads=2,
                                          embed_dim=16), "text", 0, 8),
    "text_bidirectional": (TextTransformer, dict(vocab_size=100, context_length=8, width=32, layers=2, heads=2,
                                                 embed_dim=16, causal=False), "text", 0, 8),
    "coca_text": (CoCaTextTower, dict(vocab_size=100, context_length=8, width=32, layers=2, heads=2, embed_dim=16),
                  "text", 0, 8),
    "hf_bert": (HFTextTower, dict(config=BERT, embed_dim=16, pad_id=0), "text", 0, 8),
}


def exported_towers() -> set[type]:
    """Every tower class vlp.towers exports (not its helpers)."""
    import vlp.towers

    found = (getattr(vlp.towers, name) for name in vlp.towers.__all__)
    return {obj for obj in found if isinstance(obj, type) and issubclass(obj, torch.nn.Module)}


def test_every_exported_tower_is_in_the_contract_test():
    """The list below the contract comes from the package: a new tower must bring an example."""
    assert exported_towers() == {cls for cls, *_ in TOWERS.values()}


def _input(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "text":
        return torch.tensor([[5, 6, 7, 2, 0, 0, 0, 0], [5, 9, 9, 9, 9, 9, 9, 2], [5, 2, 0, 0, 0, 0, 0, 0]])
    side = 64 if kind == "image64" else 32
    return torch.randn(3, 3, side, side, generator=g)


@pytest.mark.parametrize("kind", sorted(TOWERS))
def test_every_tower_keeps_the_output_contract(kind):
    cls, kwargs, input_kind, prefix, n_tokens = TOWERS[kind]
    torch.manual_seed(0)
    tower = cls(**kwargs).eval()
    x = _input(input_kind)
    full = tower(x)
    assert isinstance(full, TowerOutput)
    assert full.pooled.shape == (3, tower.embed_dim)
    assert full.features.shape == (3, tower.width)
    assert full.tokens.shape == (3, n_tokens, getattr(tower, "tokens_width", tower.width))
    assert full.token_mask.shape == (3, n_tokens) and full.token_mask.dtype == torch.bool
    assert full.prefix_tokens == prefix
    if input_kind == "text":  # padding is masked, real tokens are not
        assert torch.equal(full.token_mask, x != 0) and full.grid is None
    else:  # the content tokens lie on the grid
        assert full.token_mask.all() and full.grid[0] * full.grid[1] == n_tokens - prefix
    assert set(full.extra) == set(getattr(tower, "extra_parts", ()))
    assert x.ndim == tower.input_ndim
    # the pooled-only pass: same pooled and features, no tokens
    fast = tower(x, tokens=False)
    assert fast.tokens is None and fast.token_mask is None and fast.prefix_tokens == prefix and not fast.extra
    assert torch.allclose(fast.pooled, full.pooled, atol=1e-5) and torch.allclose(fast.features, full.features,
                                                                                    atol=1e-5)
    # gradients reach the tower's own parameters from the pooled output
    tower.train()
    tower(x).pooled.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())


def test_a_flattened_field_comes_back_in_its_own_shape(tiny_module):
    views = torch.randn(3, 2, 3, 32, 32)  # [B, 2 views, 3, H, W]
    out = tiny_module.run_tower("image", views, tokens=True)
    assert out.pooled.shape == (3, 2, 64) and out.tokens.shape == (3, 2, 17, 64)
    alone = tiny_module.run_tower("image", views[:, 1], tokens=True)
    assert torch.allclose(out.pooled[:, 1], alone.pooled, atol=1e-5)

"""CoCa's towers: the attentional-pool image tower and the text tower with an appended class token."""

import pytest
import torch

from vlp.errors import VLPError
from vlp.towers import CoCaImageTower, CoCaTextTower
from vlp.towers.cached import KVCache
from vlp.towers.output import TowerOutput

VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TEXT = torch.tensor([[1, 6, 7, 2, 0, 0, 0, 0], [1, 9, 9, 9, 9, 9, 9, 2], [1, 2, 0, 0, 0, 0, 0, 0]])


def image_tower(**kw):
    return CoCaImageTower("vit_tiny_patch16_224", embed_dim=16, image_size=32, model_kwargs=VIT, pool_queries=5,
                          pool_heads=2, **kw)


def text_tower():
    return CoCaTextTower(vocab_size=20, context_length=8, width=32, layers=2, heads=2, embed_dim=16)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_coca_towers_keep_the_output_contract(kind):
    """The image tower's ``tokens`` are its trunk's (on their grid); the decoder queries are the
    named output ``queries``. The text tower's tokens are its positions (not the class token)."""
    torch.manual_seed(0)
    tower = (image_tower() if kind == "image" else text_tower()).eval()
    x = torch.randn(3, 3, 32, 32) if kind == "image" else TEXT
    full = tower(x)
    assert isinstance(full, TowerOutput) and x.ndim == tower.input_ndim
    assert full.pooled.shape == (3, 16) and full.features.shape == (3, tower.width)
    if kind == "image":
        assert full.tokens.shape == (3, 1 + 16, tower.tokens_width) and full.prefix_tokens == 1
        assert full.grid == (4, 4) and full.token_mask.all() and full.kept is None
        assert full.extra["queries"].shape == (3, 5, tower.queries_width) and tower.extra_parts == {"queries"}
        assert torch.equal(full.tokens, tower.trunk.forward_features(x))
    else:
        assert full.tokens.shape == (3, 8, tower.width) and full.prefix_tokens == 0
        assert torch.equal(full.token_mask, TEXT != 0)
    fast = tower(x, tokens=False)
    assert fast.tokens is None and not fast.extra and torch.allclose(fast.pooled, full.pooled, atol=1e-5)
    assert torch.allclose(fast.features, full.features, atol=1e-5)
    tower.train()
    out = tower(x)
    (out.pooled.sum() + (out.extra["queries"] if kind == "image" else out.tokens).sum()).backward()
    grads = {name for name, p in tower.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    if kind == "image":  # both poolers learn: the contrastive query from pooled, the decoder queries from queries
        assert {"attn_pool.query", "attn_pool_contrastive.query", "proj.weight"} <= grads
    else:
        assert {"cls_emb", "token_embedding.weight", "proj.weight"} <= grads


def test_image_pooled_ignores_the_decoder_queries():
    torch.manual_seed(0)
    tower = image_tower().eval()
    x = torch.randn(2, 3, 32, 32)
    before = tower(x)
    with torch.no_grad():
        tower.attn_pool.query.add_(1.0)
    after = tower(x)
    assert torch.equal(before.pooled, after.pooled)
    assert not torch.allclose(before.extra["queries"], after.extra["queries"])


def test_text_embedding_reads_every_real_token_and_no_padding():
    torch.manual_seed(0)
    tower = text_tower().eval()
    base = tower(TEXT)
    changed_real = TEXT.clone()
    changed_real[0, 1] = 11
    assert not torch.allclose(tower(changed_real).pooled[0], base.pooled[0])
    # padding is masked out of the class token's attention: another pad id at those positions,
    # told to the tower, changes nothing
    tower.pad_id = 19
    repadded = torch.where(TEXT == 0, torch.full_like(TEXT, 19), TEXT)
    out = tower(repadded)
    assert torch.allclose(out.pooled, base.pooled, atol=1e-6)
    tower.pad_id = 0
    # the text positions are causal: the class token appended after them does not reach them
    with torch.no_grad():
        tower.cls_emb.add_(1.0)
    assert torch.allclose(tower(TEXT).tokens, base.tokens, atol=1e-6)


def test_text_decode_with_the_cache_gives_the_full_pass_states():
    torch.manual_seed(0)
    tower = text_tower().eval()
    ids = TEXT[1:2]
    full = tower(ids).tokens
    cache = KVCache()
    first = tower.decode(ids[:, :3], cache)  # several positions at once, then one at a time
    rest = [tower.decode(ids[:, i : i + 1], cache) for i in range(3, 8)]
    assert torch.allclose(torch.cat([first, *rest], 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="past the tower's context_length"):
        tower.decode(ids[:, :1], cache)


def test_image_tower_refuses_what_it_cannot_do():
    with pytest.raises(VLPError, match="does not load init_from"):
        image_tower(init_from="x.ckpt")
    with pytest.raises(VLPError, match="not divisible by its heads"):
        CoCaImageTower("vit_tiny_patch16_224", embed_dim=15, image_size=32, model_kwargs=VIT, pool_heads=2)


def test_flip_masking_under_coca():
    torch.manual_seed(0)
    tower = image_tower(mask_ratio=0.5)
    x = torch.randn(2, 3, 32, 32)
    seen = []
    tower.trunk.blocks[0].register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
    out = tower.train()(x)
    assert seen[-1] == 1 + 8 and out.extra["queries"].shape == (2, 5, 16)  # half of the 16 patches, the same 5 queries
    assert out.tokens.shape == (2, 1 + 8, 32) and out.kept.shape == (2, 8)
    tower.eval()(x)
    assert seen[-1] == 1 + 16

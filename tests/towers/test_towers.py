import pytest
import torch

from vlp.errors import VLPError
from vlp.towers import HFTextTower, TextTransformer, TimmImageTower

# One small member of every family the image tower promises.
TIMM_FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)),
    "resnet": ("resnet18", dict()),
    "mixer": ("mixer_s16_224", dict(img_size=32)),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64))),
    "efficientnet": ("efficientnet_b0", dict()),
}


@pytest.mark.parametrize("family", sorted(TIMM_FAMILIES))
def test_timm_image_tower_forward_backward(family):
    name, kwargs = TIMM_FAMILIES[family]
    tower = TimmImageTower(name, embed_dim=32, model_kwargs=kwargs)
    out = tower(torch.randn(2, 3, 32, 32))
    assert out.pooled.shape == (2, 32)
    out.pooled.sum().backward()
    grads = [p.grad for p in tower.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_timm_pretrained_weights_load_from_a_local_file(tmp_path):
    import timm

    kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, **kwargs)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    tower = TimmImageTower("vit_tiny_patch16_224", embed_dim=16, pretrained_path=str(tmp_path / "w.pth"),
                           model_kwargs=kwargs)
    assert torch.equal(tower.trunk.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_timm_errors_are_clear(tmp_path):
    with pytest.raises(VLPError, match="unknown timm model 'vit_tiny_patch16_22'; close: vit_tiny_patch16_224"):
        TimmImageTower("vit_tiny_patch16_22")
    with pytest.raises(VLPError, match="file not found"):
        TimmImageTower("resnet18", pretrained_path=str(tmp_path / "nope.pth"))


def test_text_transformer_pools_at_end_of_text_and_is_causal():
    torch.manual_seed(0)
    tower = TextTransformer(vocab_size=50, context_length=8, width=32, layers=2, heads=2, embed_dim=16).eval()
    a = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0]])
    b = a.clone()
    b[0, 1] = 7  # a token before the end changes the embedding
    assert not torch.allclose(tower(a).pooled, tower(b).pooled)
    # causal attention: later tokens cannot change earlier states
    c = a.clone()
    c[0, 5] = 9
    assert torch.allclose(tower(a).tokens[:, :5], tower(c).tokens[:, :5], atol=1e-6)
    # the pooled vector is the projected final state at the end-of-text position
    out = tower(a)
    assert torch.allclose(out.pooled, tower.proj(out.tokens[0, 3])[None], atol=1e-6)
    # shorter sequences than the context work
    assert tower(a[:, :5]).pooled.shape == (1, 16)


def test_text_transformer_bidirectional_ignores_padding():
    torch.manual_seed(0)
    tower = TextTransformer(vocab_size=50, context_length=8, width=32, layers=2, heads=2, embed_dim=16,
                            causal=False).eval()
    a = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0]])
    assert torch.allclose(tower(a).pooled, tower(a[:, :4]).pooled, atol=1e-5)


def test_hf_text_tower_from_config_and_local_directory(tmp_path):
    cfg = dict(model_type="bert", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=16)
    tower = HFTextTower(config=cfg, embed_dim=24, pooler="cls")
    text = torch.tensor([[2, 10, 11, 3, 0, 0]])
    out = tower(text)
    assert out.pooled.shape == (1, 24) and out.tokens.shape == (1, 6, 32)
    out.pooled.sum().backward()
    assert all(p.grad is not None for p in tower.parameters())  # pooler removed: no unused weights

    tower.transformer.save_pretrained(tmp_path / "bert")
    again = HFTextTower(path=str(tmp_path / "bert"), embed_dim=24, pooler="cls")
    again.proj.load_state_dict(tower.proj.state_dict())
    assert torch.allclose(again.eval()(text).pooled, tower.eval()(text).pooled, atol=1e-6)


def test_hf_text_tower_mean_pooling_ignores_padding():
    cfg = dict(model_type="bert", vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=16)
    tower = HFTextTower(config=cfg, embed_dim=8, pooler="mean").eval()
    short = torch.tensor([[2, 10, 3]])
    padded = torch.tensor([[2, 10, 3, 0, 0]])
    assert torch.allclose(tower(short).pooled, tower(padded).pooled, atol=1e-5)


def test_hf_text_tower_needs_a_source():
    with pytest.raises(VLPError, match="exactly one of path"):
        HFTextTower()


def test_clip_init_follows_open_clip_vision_transformer():
    kwargs = dict(patch_size=8, embed_dim=64, depth=2, num_heads=2)
    torch.manual_seed(0)
    tower = TimmImageTower("vit_tiny_patch16_224", embed_dim=16, image_size=32, model_kwargs=kwargs, init="clip")
    trunk = tower.trunk
    assert abs(trunk.pos_embed.std().item() - 64**-0.5) < 0.02
    assert abs(trunk.cls_token.std().item() - 64**-0.5) < 0.05
    fc1 = trunk.blocks[0].mlp.fc1.weight  # PyTorch default: uniform within 1/sqrt(fan_in)
    assert fc1.abs().max() <= 64**-0.5 + 1e-6 and fc1.std() > 0.03
    timm_default = TimmImageTower("vit_tiny_patch16_224", embed_dim=16, image_size=32, model_kwargs=kwargs)
    assert timm_default.trunk.blocks[0].mlp.fc1.weight.std() < 0.025  # timm: trunc normal 0.02


def test_clip_init_attention_and_projection():
    kwargs = dict(patch_size=8, embed_dim=64, depth=1, num_heads=2)
    tower = TimmImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, model_kwargs=kwargs, init="clip")
    attn = tower.trunk.blocks[0].attn
    assert attn.qkv.bias.abs().sum() == 0 and attn.proj.bias.abs().sum() == 0
    assert attn.qkv.weight.abs().max() <= (6 / (64 + 192)) ** 0.5 + 1e-6  # xavier-uniform bound
    assert abs(tower.proj.weight.std().item() - 64**-0.5) < 0.02


def test_augreg_regularisers_reach_timm():
    from timm.layers import DropPath

    tower = TimmImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32,
                           model_kwargs=dict(patch_size=8, embed_dim=64, depth=3, num_heads=2, drop_path_rate=0.2,
                                             drop_rate=0.1))
    rates = [b.drop_path1.drop_prob for b in tower.trunk.blocks if isinstance(b.drop_path1, DropPath)]
    assert rates and rates[-1] == pytest.approx(0.2)  # stochastic depth, rising linearly with depth
    assert tower.trunk.head_drop.p == pytest.approx(0.1)  # dropout on the pooled features


def test_randaugment_changes_training_images_and_bad_strings_fail():
    from vlp.data.datamodule import VLPDataModule
    from vlp.errors import VLPError

    def first_batch(**kw):
        dm = VLPDataModule(batch_size=8, num_workers=0, image_size=32, seed=0, train_num_samples=8, **kw)
        return next(iter(dm.train_dataloader()))["image"]

    assert torch.equal(first_batch(), first_batch())
    assert not torch.equal(first_batch(), first_batch(randaugment="rand-m9-n2"))
    with pytest.raises(VLPError, match="data.randaugment"):
        VLPDataModule(randaugment="autoaug-v0")

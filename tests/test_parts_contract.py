"""The contracts that let parts plug in without editing vlp: every tower kind returns one
TowerOutput with consistent shapes, and a model with three towers (one shared by two names) and
an objective from outside vlp trains through the CLI."""

import pytest
import torch

from tests.conftest import TINY
from vlp.towers import HFTextTower, TextTransformer, TimmImageTower
from vlp.towers.output import TowerOutput

VIT = dict(patch_size=8, embed_dim=64, depth=2, num_heads=2)
BERT = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 16}

TOWERS = {  # name -> (factory, input, expected prefix tokens, expected token count)
    "vit": (lambda: TimmImageTower("vit_tiny_patch16_224", embed_dim=16, image_size=32, model_kwargs=VIT), "image", 1,
            1 + 16),
    "vit_registers": (lambda: TimmImageTower("vit_tiny_patch16_224", embed_dim=16, image_size=32,
                                             model_kwargs={**VIT, "reg_tokens": 2}), "image", 3, 3 + 16),
    "vit_avg": (lambda: TimmImageTower("vit_tiny_patch16_224", embed_dim=16, image_size=32,
                                       model_kwargs={**VIT, "global_pool": "avg"}), "image", 1, 1 + 16),
    "resnet": (lambda: TimmImageTower("resnet18", embed_dim=16), "image", 0, 1),  # 32 px / 32 = a 1 x 1 map
    "resnet_64px": (lambda: TimmImageTower("resnet18", embed_dim=16), "image64", 0, 4),
    "convnext": (lambda: TimmImageTower("convnext_atto", embed_dim=16), "image64", 0, 4),
    "efficientnet": (lambda: TimmImageTower("efficientnet_b0", embed_dim=16), "image64", 0, 4),
    "mixer": (lambda: TimmImageTower("mixer_s32_224", embed_dim=16, image_size=64), "image64", 0, 4),
    "text_causal": (lambda: TextTransformer(vocab_size=100, context_length=8, width=32, layers=2, heads=2,
                                            embed_dim=16), "text", 0, 8),
    "text_bidirectional": (lambda: TextTransformer(vocab_size=100, context_length=8, width=32, layers=2, heads=2,
                                                   embed_dim=16, causal=False), "text", 0, 8),
    "hf_bert": (lambda: HFTextTower(config=BERT, embed_dim=16, pad_id=0), "text", 0, 8),
}


def _input(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "text":
        return torch.tensor([[5, 6, 7, 2, 0, 0, 0, 0], [5, 9, 9, 9, 9, 9, 9, 2], [5, 2, 0, 0, 0, 0, 0, 0]])
    side = 64 if kind == "image64" else 32
    return torch.randn(3, 3, side, side, generator=g)


@pytest.mark.parametrize("kind", sorted(TOWERS))
def test_every_tower_keeps_the_output_contract(kind):
    factory, input_kind, prefix, n_tokens = TOWERS[kind]
    torch.manual_seed(0)
    tower = factory().eval()
    x = _input(input_kind)
    full = tower(x)
    assert isinstance(full, TowerOutput)
    assert full.pooled.shape == (3, tower.embed_dim)
    assert full.features.shape == (3, tower.width)
    assert full.tokens.shape == (3, n_tokens, tower.width)
    assert full.token_mask.shape == (3, n_tokens) and full.token_mask.dtype == torch.bool
    assert full.prefix_tokens == prefix
    if input_kind == "text":  # padding is masked, real tokens are not
        assert torch.equal(full.token_mask, x != 0)
    else:
        assert full.token_mask.all()
    assert x.ndim == tower.input_ndim
    # the pooled-only pass: same pooled and features, no tokens
    fast = tower(x, tokens=False)
    assert fast.tokens is None and fast.token_mask is None and fast.prefix_tokens == prefix
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


THREE_TOWERS = """
description: three towers, one shared by two names, and an objective from outside vlp
extends: clip_tiny
model:
  towers:
    aux:
      class_path: vlp.towers.TextTransformer
      init_args: {context_length: 16, width: 32, layers: 1, heads: 2, embed_dim: 64}
  share: {views: image}
  inputs: {aux: text}
  objectives:
    - class_path: vlp.objectives.ContrastiveLoss
    - class_path: tests.outside_parts.TokenMatch
      init_args: {weight: 0.5}
data: {ssl_views: true}
"""


def test_three_towers_and_an_outside_objective_train_through_the_cli(tmp_path):
    from vlp.cli import run_cli

    recipe = tmp_path / "three.yaml"
    recipe.write_text(THREE_TOWERS)
    cli = run_cli(["fit", "--recipe", str(recipe), *TINY, "--data.train_num_samples", "32",
                   "--trainer.max_steps", "3", "--trainer.max_epochs", "-1", "--trainer.logger", "false",
                   "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
    model = cli.model
    assert cli.trainer.global_step == 3
    assert list(model.towers) == ["image", "text", "aux"] and model.share == {"views": "image"}
    assert model.reads == {"image": {"pooled"}, "text": {"pooled"}, "aux": {"tokens", "token_mask"},
                           "views": {"pooled"}}
    match = model.objectives[1]
    assert match.seen[0] == ((8, 16, 32), (8, 2, 64))  # aux tokens [B, L, W]; views pooled [B, 2, E]
    # the third tower and the outside objective's own module learned
    assert model.towers.aux.token_embedding.weight.grad is not None
    assert match.proj.weight.grad is not None and match.proj.weight.grad.abs().sum() > 0
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/token_match_loss"]) and torch.isfinite(metrics["train/contrastive_loss"])


def _objectives():
    from vlp.objectives import ContrastiveLoss, SigmoidLoss, SimCLRLoss

    return {"contrastive": lambda: ContrastiveLoss(), "sigmoid": lambda: SigmoidLoss(),
            "simclr": lambda: SimCLRLoss(mlp_dim=32, out_dim=16, batch_norm=False)}


@pytest.mark.parametrize("name", ["contrastive", "sigmoid", "simclr"])
def test_every_objective_keeps_the_objective_contract(tiny_module, name):
    """Declared reads are valid names and parts; the module runs exactly the towers read; the
    loss is a finite scalar, metrics are scalars, and gradients reach exactly the towers read."""
    from tests.test_module import _batch
    from vlp.module import PARTS, VLPModule

    objective = _objectives()[name]()
    module = VLPModule(dict(tiny_module.towers), [objective], share={"views": "image"})
    assert all(r.partition(".")[2] in PARTS for r in objective.reads)
    batch = _batch(6)
    batch["views"] = torch.randn(6, 2, 3, 32, 32)
    ran = []
    for tower_name, tower in module.towers.items():
        tower.register_forward_hook(lambda m, a, o, n=tower_name: ran.append(n))
    outputs = module(batch)
    assert set(outputs) == {r.split(".")[0] for r in objective.reads}
    assert sorted(set(ran)) == sorted({module.share.get(n, n) for n in outputs})
    loss, metrics = objective(outputs, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.is_tensor(v) and v.numel() == 1 for v in metrics.values())
    loss.backward()
    for tower_name, tower in module.towers.items():
        got = any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
        assert got == (tower_name in ran), tower_name

"""The objective contract, over every objective vlp.objectives exports (the list comes from the
package: a new objective must bring an example here)."""

import pytest
import torch


def _clip_towers():
    from vlp.towers import TextTransformer, TimmImageTower

    image = TimmImageTower("vit_tiny_patch16_224", embed_dim=64, image_size=32,
                           model_kwargs=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2))
    text = TextTransformer(context_length=16, width=64, layers=2, heads=2, embed_dim=64)
    return {"image": image, "text": text}


def _coca_towers():
    from vlp.towers import CoCaImageTower, CoCaTextTower

    image = CoCaImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, pool_queries=4, pool_heads=2,
                           model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2})
    return {"image": image, "text": CoCaTextTower(context_length=16, width=32, layers=1, heads=2, embed_dim=32)}


def _examples() -> dict:
    """Exported objective class -> (objective, towers, heads) at test size."""
    from vlp.heads import CaptionDecoder
    from vlp.objectives import CaptioningLoss, ContrastiveLoss, SigmoidLoss, SimCLRLoss

    return {
        ContrastiveLoss: lambda: (ContrastiveLoss(), _clip_towers(), {}),
        SigmoidLoss: lambda: (SigmoidLoss(), _clip_towers(), {}),
        SimCLRLoss: lambda: (SimCLRLoss(mlp_dim=32, out_dim=16, batch_norm=False), _clip_towers(), {}),
        CaptioningLoss: lambda: (CaptioningLoss(), _coca_towers(), {"decoder": CaptionDecoder(layers=1, heads=2)}),
    }


def exported_objectives() -> dict[str, type]:
    import vlp.objectives
    from vlp.objectives import Objective

    found = {name: getattr(vlp.objectives, name) for name in vlp.objectives.__all__}
    return {name: cls for name, cls in found.items() if isinstance(cls, type) and issubclass(cls, Objective)
            and cls is not Objective}


def test_every_exported_objective_has_an_example():
    assert set(exported_objectives().values()) == set(_examples())


@pytest.mark.parametrize("name", sorted(exported_objectives()))
def test_every_objective_keeps_the_objective_contract(name):
    """Declared reads are valid names and parts; the module runs exactly the towers read; the
    loss is a finite scalar, metrics are scalars, and gradients reach exactly the towers read (and
    the heads the objective trains)."""
    from tests.test_module import _batch
    from vlp.data.text_spec import bind_parts
    from vlp.data.tokenizer import TextTokenizer
    from vlp.module import PARTS, VLPModule

    torch.manual_seed(0)
    objective, towers, heads = _examples()[exported_objectives()[name]]()
    module = VLPModule(towers, [objective], share={"views": "image"}, heads=heads)
    bind_parts(module, TextTokenizer(context_length=16).spec)
    parts = {r.partition(".")[2] for r in objective.reads}
    assert parts <= PARTS | {p for t in towers.values() for p in getattr(t, "extra_parts", ())}
    batch = _batch(6)
    batch["views"] = torch.randn(6, 2, 3, 32, 32)
    ran = []
    for tower_name, tower in module.towers.items():
        tower.register_forward_hook(lambda m, a, o, n=tower_name: ran.append(n))
    outputs = module(batch)
    assert set(outputs) == {r.split(".")[0] for r in objective.reads}
    assert sorted(set(ran)) == sorted({module.share.get(n, n) for n in outputs})
    loss, metrics = module.objectives[0](outputs, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.is_tensor(v) and v.numel() == 1 for v in metrics.values())
    loss.backward()
    for tower_name, tower in module.towers.items():
        got = any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
        assert got == (tower_name in ran), tower_name
    for head_name, head in module.heads.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), head_name

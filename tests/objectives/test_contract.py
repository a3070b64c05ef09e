"""The objective contract, over every objective vlp ships."""

import pytest
import torch


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

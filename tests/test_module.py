import math

import pytest
import torch
from lightning.pytorch import Trainer

from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.module import VLPModule
from vlp.objectives import ContrastiveLoss, Objective


class MeanSquaredGap(Objective):
    """An objective defined outside vlp: the module must take it as it is."""

    default_name = "gap"

    def forward(self, outputs, batch):
        gap = (outputs["image_embed"] - outputs["text_embed"]).pow(2).sum(-1).mean()
        return gap, {}


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = TextTokenizer(context_length=16)
    return {"image": torch.randn(n, 3, 32, 32, generator=g),
            "text": tok([f"emoji number {i}" for i in range(n)])}


class _Logs:
    def __init__(self, module):
        self.values = {}
        module.log = lambda name, value, **kw: self.values.__setitem__(name, float(value.detach() if torch.is_tensor(value) else value))


def test_total_is_weighted_sum_and_each_objective_is_logged(tiny_module):
    module = tiny_module
    module.objectives.append(MeanSquaredGap(weight=0.5))
    logs = _Logs(module)
    total = module.training_step(_batch(), 0)
    contrastive = logs.values["train/contrastive_loss"]
    gap = logs.values["train/gap_loss"]
    assert math.isclose(total.item(), contrastive + 0.5 * gap, rel_tol=1e-6)
    assert math.isclose(logs.values["train/loss"], total.item(), rel_tol=1e-6)
    assert "train/contrastive_logit_scale" in logs.values


def test_missing_batch_field_names_the_objective(tiny_module):
    class NeedsViews(MeanSquaredGap):
        needs = frozenset({"image", "text", "views"})
        default_name = "views"

    tiny_module.objectives.append(NeedsViews())
    _Logs(tiny_module)
    with pytest.raises(VLPError, match=r"objective views needs batch fields \['views'\]"):
        tiny_module.training_step(_batch(), 0)


def test_embed_dims_must_agree(tiny_module):
    from vlp.towers import TextTransformer

    text = TextTransformer(context_length=16, width=64, layers=1, heads=2, embed_dim=32)
    with pytest.raises(VLPError, match="share embed_dim, got 64 and 32"):
        VLPModule(tiny_module.image_tower, text, [ContrastiveLoss()])


def test_loss_decreases_when_fitting_a_fixed_batch(tiny_module):
    module = tiny_module
    batch = _batch(16)
    trainer = Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    losses = []

    original = module.training_step

    def step(batch, batch_idx):
        loss = original(batch, batch_idx)
        losses.append(loss.item())
        return loss

    module.training_step = step
    loader = torch.utils.data.DataLoader([batch] * 30, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_encoders_return_unit_vectors(tiny_module):
    b = _batch(4)
    assert torch.allclose(tiny_module.encode_image(b["image"]).norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(tiny_module.encode_text(b["text"]).norm(dim=-1), torch.ones(4), atol=1e-5)

import math

import pytest
import torch
from lightning.pytorch import Trainer

from tests.conftest import TINY
from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.module import VLPModule
from vlp.objectives import ContrastiveLoss, Objective


class MeanSquaredGap(Objective):
    """An objective defined outside vlp: the module must take it as it is."""

    default_name = "gap"

    def forward(self, outputs, batch):
        gap = (outputs["image"].pooled - outputs["text"].pooled).pow(2).sum(-1).mean()
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


def test_an_objective_reading_an_unknown_name_is_refused(tiny_module):
    class ReadsViews(MeanSquaredGap):
        reads = frozenset({"views.features"})
        default_name = "views"

    with pytest.raises(VLPError, match=r"objective views reads views.features, but there is no tower or shared "
                                       r"name 'views' \(the names: \['image', 'text'\]; share a tower"):
        VLPModule(dict(tiny_module.towers), [ReadsViews()])


def test_a_missing_batch_field_is_named(tiny_module):
    module = VLPModule(dict(tiny_module.towers), [ContrastiveLoss()], share={"views": "image"})
    module.objectives.append(MeanSquaredGap())
    module.reads["views"] = {"features"}
    _Logs(module)
    with pytest.raises(VLPError, match=r"the batch has no field 'views', which the objectives read"):
        module.training_step(_batch(), 0)


def test_the_module_computes_only_what_the_objectives_read(tiny_module):
    calls = []
    for name, tower in tiny_module.towers.items():
        tower.register_forward_hook(lambda m, args, kwargs, out, name=name: calls.append((name, kwargs.get("tokens", True), out.tokens is not None)), with_kwargs=True)
    outputs = tiny_module(_batch())
    assert sorted(calls) == [("image", False, False), ("text", False, False)]  # pooled-only passes
    calls.clear()
    outputs = tiny_module(_batch(), reads={"text": {"tokens"}})
    assert calls == [("text", True, True)] and set(outputs) == {"text"}
    assert outputs["text"].tokens.shape[:2] == outputs["text"].token_mask.shape


def test_embed_dims_must_agree(tiny_module):
    from vlp.towers import TextTransformer

    text = TextTransformer(context_length=16, width=64, layers=1, heads=2, embed_dim=32)
    with pytest.raises(VLPError, match="the towers must share embed_dim, got image 64 and text 32"):
        VLPModule({"image": tiny_module.towers["image"], "text": text}, [ContrastiveLoss()])


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
    assert torch.allclose(tiny_module.embed("image", b["image"]).norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(tiny_module.embed("text", b["text"]).norm(dim=-1), torch.ones(4), atol=1e-5)


class Poison(MeanSquaredGap):
    """A loss that turns NaN on chosen calls (1-based)."""

    default_name = "poison"

    def __init__(self, bad_calls, **kwargs):
        super().__init__(**kwargs)
        self.bad_calls, self.calls = set(bad_calls), 0

    def forward(self, outputs, batch):
        self.calls += 1
        loss, metrics = super().forward(outputs, batch)
        return (loss * float("nan") if self.calls in self.bad_calls else loss), metrics


def _fit_fixed_batch(module, steps):
    snapshots = []
    original = module.training_step

    def step(batch, batch_idx):
        snapshots.append({n: p.detach().clone() for n, p in module.named_parameters()})
        return original(batch, batch_idx)

    module.training_step = step
    trainer = Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([_batch(8)] * steps, batch_size=None))
    snapshots.append({n: p.detach().clone() for n, p in module.named_parameters()})
    return trainer, snapshots


def test_a_non_finite_step_is_skipped_and_counted(tiny_module):
    tiny_module.objectives.append(Poison([3]))
    trainer, snaps = _fit_fixed_batch(tiny_module, 5)
    assert trainer.global_step == 5 and tiny_module.nonfinite_skipped == 1
    name = "towers.image.trunk.patch_embed.proj.weight"
    # snaps[k] = parameters before call k+1: call 3 (index 2) changed nothing, the others did
    assert torch.equal(snaps[2][name], snaps[3][name])
    assert not torch.equal(snaps[1][name], snaps[2][name]) and not torch.equal(snaps[3][name], snaps[4][name])
    assert all(torch.isfinite(p).all() for p in tiny_module.parameters())


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tiny_module):
    tiny_module.objectives.append(Poison(range(2, 100)))
    tiny_module.optim.max_nonfinite_in_row = 2
    with pytest.raises(VLPError, match=r"not finite for 3 steps in a row \(step 3; model.optim.max_nonfinite_in_row "
                                       r"is 2\): lower model.optim.lr"):
        _fit_fixed_batch(tiny_module, 10)


def test_rng_states_round_trip_through_a_checkpoint(tiny_module):
    import random

    import numpy as np

    ckpt = {}
    tiny_module.on_save_checkpoint(ckpt)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand(2)  # move on
    tiny_module.on_load_checkpoint(ckpt)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


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
data: {fields: {views: {class_path: vlp.data.fields.Views}}}
"""


def _fit_recipe(tmp_path, text: str, steps: int, samples: int):
    """`vlp fit` of a recipe written to ``tmp_path`` at test size, ``steps`` steps, nothing saved."""
    from vlp.cli import run_cli

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    return run_cli(["fit", "--recipe", str(recipe), *TINY, "--data.train_num_samples", str(samples),
                    "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--trainer.logger", "false",
                    "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                    "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])


def test_three_towers_and_an_outside_objective_train_through_the_cli(tmp_path):
    cli = _fit_recipe(tmp_path, THREE_TOWERS, steps=3, samples=32)
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


SECOND_LANGUAGE = """
description: CLIP with a second caption (the Chinese CLDR label) contrasted through the same text tower
extends: clip_tiny
model:
  share: {text_zh: text}
  objectives:
    - class_path: vlp.objectives.ContrastiveLoss
    - class_path: vlp.objectives.ContrastiveLoss
      init_args: {name: zh, a: image, b: text_zh}
data:
  fields: {text_zh: {class_path: vlp.data.fields.Caption, init_args: {key: labels.zh}}}
"""


def test_a_second_language_pair_needs_no_module_code(tmp_path):
    """A declared second caption field and an objective that names the pair it compares: the
    module runs the shared text tower on the ``text_zh`` field, both losses train."""
    cli = _fit_recipe(tmp_path, SECOND_LANGUAGE, steps=2, samples=16)
    model = cli.model
    assert model.reads == {"image": {"pooled"}, "text": {"pooled"}, "text_zh": {"pooled"}}
    assert model.inputs["text_zh"] == "text_zh" and "text_zh" in cli.datamodule.batch_fields()
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/zh_loss"]) and torch.isfinite(metrics["train/contrastive_loss"])
    assert metrics["train/zh_loss"] != metrics["train/contrastive_loss"]
    batch = cli.datamodule.on_before_batch_transfer(next(iter(cli.datamodule.train_dataloader())), 0)
    with torch.no_grad():
        zh = model.embed("text_zh", batch["text_zh"])
    assert torch.allclose(zh, model.embed("text", batch["text_zh"]))  # one tower under two names
    assert model.similarity_scale("image", "text_zh") == pytest.approx(float(model.objectives[1].scale()))


def test_a_missing_field_through_the_name_map_is_a_clear_error(tiny_module):
    from vlp.module import FieldView

    view = FieldView({"image": torch.zeros(1)}, {"text_zh": "zh_ids"})
    assert torch.equal(view["image"], torch.zeros(1))
    with pytest.raises(VLPError, match=r"^the batch has no field 'zh_ids' \(the field of the name 'text_zh'\)"):
        view["text_zh"]
    assert view.get("text_zh") is None and "text_zh" not in view and "image" in view

import pytest
import torch

from vlp.errors import VLPError
from vlp.recipes import list_recipes, load_recipe, merge, recipe_names


def test_every_recipe_has_a_description():
    rows = dict(list_recipes())
    assert {"clip_tiny", "clip_vit_b16"} <= rows.keys()
    assert all(desc for desc in rows.values())


def test_unknown_recipe_lists_close_names():
    with pytest.raises(VLPError, match="unknown recipe 'clip_tiyn'; did you mean: clip_tiny"):
        load_recipe("clip_tiyn")


def test_extends_merges_and_interpolates_after_merge(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "description: base\n"
        "data: {image_size: 32, batch_size: 8}\n"
        "model:\n"
        "  image_tower: {class_path: a.B, init_args: {size: '${data.image_size}', keep: 1}}\n"
        "  objectives: [{class_path: x.Y}]\n"
    )
    (tmp_path / "child.yaml").write_text(
        "description: child\nextends: base.yaml\n"
        "data: {image_size: 48}\n"
        "model:\n"
        "  image_tower: {init_args: {keep: 2}}\n"
        "  objectives: [{class_path: x.Z}]\n"
    )
    spec = load_recipe(str(tmp_path / "child.yaml"))
    assert spec["data"] == {"image_size": 48, "batch_size": 8}
    assert spec["model"]["image_tower"] == {"class_path": "a.B", "init_args": {"size": 48, "keep": 2}}
    assert spec["model"]["objectives"] == [{"class_path": "x.Z"}]  # lists replace
    assert "description" not in spec and "extends" not in spec


def test_overrides_reach_interpolations(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "data: {image_size: 32}\nmodel: {tower: {class_path: a.B, init_args: {size: '${data.image_size}', w: 1}}}\n")
    spec = load_recipe(str(tmp_path / "r.yaml"), {"data.image_size": 64, "model.tower.w": 3})
    assert spec["model"]["tower"]["init_args"] == {"size": 64, "w": 3}


def test_changing_class_path_replaces_the_node():
    base = {"t": {"class_path": "a.A", "init_args": {"x": 1}}}
    assert merge(base, {"t": {"class_path": "b.B"}}) == {"t": {"class_path": "b.B"}}


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(VLPError, match="extends itself"):
        load_recipe(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_builds_through_the_real_cli(name):
    from tests.conftest import tiny_overrides
    from vlp.cli import run_cli

    # the GPU recipes name strategies (ddp, deepspeed) that this CPU test replaces
    # LiT recipes lock weights that the user supplies; tests/test_lit.py runs them with weights
    unlocked = ["--model.image_tower.init_args.lock", "false"] if name.startswith("lit_") else []
    cli = run_cli(["--recipe", name, *tiny_overrides(name), "--trainer.logger", "false", "--trainer.strategy", "auto",
                   "--trainer.precision", "32-true", "--trainer.devices", "1", *unlocked], run=False)
    assert cli.model.text_tower.embed_dim == 64
    assert cli.datamodule.batch_size == 8


@pytest.mark.parametrize("name", [n for n in recipe_names() if n.endswith("_tiny") and n != "lit_tiny"])
def test_every_tiny_recipe_trains(name, tmp_path):
    from tests.conftest import tiny_overrides
    from vlp.cli import run_cli

    cli = run_cli(["fit", "--recipe", name, *tiny_overrides(name), "--trainer.max_steps", "4", "--trainer.enable_progress_bar",
                   "false", "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert cli.trainer.global_step == 4
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_paper_recipes_carry_their_settings():
    flip_l = load_recipe("flip_vit_l")
    assert flip_l["trainer"]["strategy"] == "deepspeed_stage_2" and flip_l["trainer"]["precision"] == "bf16-mixed"
    assert flip_l["model"]["image_tower"]["init_args"]["mask_ratio"] == 0.5
    assert flip_l["model"]["image_tower"]["init_args"]["model_name"] == "vit_large_patch16_224"
    assert flip_l["model"]["optim"]["betas"] == [0.9, 0.95]
    siglip = load_recipe("siglip_vit_b16")
    assert siglip["model"]["objectives"][0]["class_path"] == "vlp.objectives.SigmoidLoss"

import pytest
import torch

from vlp.errors import VLPError
from vlp.recipes import list_recipes, load_recipe, merge, recipe_names, recipe_vars


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


def test_null_removes_a_part_of_the_parent_recipe():
    base = {"towers": {"image": {"class_path": "a.A"}, "text": {"class_path": "b.B", "init_args": {"w": 1}}},
            "clip": 1.0}
    merged = merge(base, {"towers": {"text": None}, "clip": None})
    assert merged == {"towers": {"image": {"class_path": "a.A"}}, "clip": None}  # a plain value is set to null
    clippo = load_recipe("clippo_tiny")
    assert list(clippo["model"]["towers"]) == ["image"] and clippo["model"]["share"] == {"text": "image"}


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
    unlocked = ["--model.towers.image.init_args.lock", "false"] if name.startswith("lit_") else []
    cli = run_cli(["--recipe", name, *tiny_overrides(name), "--trainer.logger", "false", "--trainer.strategy", "auto",
                   "--trainer.precision", "32-true", "--trainer.devices", "1", *unlocked], run=False)
    text = cli.model.towers[cli.model.share.get("text", "text")]  # CLIPPO: the image tower reads the text
    assert text.embed_dim == 64
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
    assert flip_l["trainer"]["strategy"] == "vlp_deepspeed_stage_2" and flip_l["trainer"]["precision"] == "bf16-mixed"
    assert flip_l["model"]["towers"]["image"]["init_args"]["mask_ratio"] == 0.5
    assert flip_l["model"]["towers"]["image"]["init_args"]["model_name"] == "vit_large_patch16_224"
    assert flip_l["model"]["optim"]["betas"] == [0.9, 0.95]
    siglip = load_recipe("siglip_vit_b16")
    assert siglip["model"]["objectives"][0]["class_path"] == "vlp.objectives.SigmoidLoss"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("description: broken\ndata:\n  batch_size: 8\n   image_size: 32\n")
    with pytest.raises(VLPError) as info:
        load_recipe(str(path))
    assert str(info.value) == f"recipe {path}:4:14: invalid YAML: mapping values are not allowed here"
    path.write_text("data: {batch_size: 8\n")
    with pytest.raises(VLPError, match=rf"recipe {path}:2:1: invalid YAML: expected ',' or '}}', but got "
                                       r"'<stream end>' \(while parsing a flow mapping\)$"):
        load_recipe(str(path))


def test_vars_merge_through_extends_and_are_typed(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "vars: {every: 100, lr: 0.001, tag: run, flag: false, anything: null}\n"
        "trainer: {callbacks: [{class_path: a.Ckpt, init_args: {every_n_steps: '${vars.every}'}}, {class_path: b.E}]}\n"
        "model: {lr: '${vars.lr}', name: 'clip-${vars.tag}', enabled: '${vars.flag}', x: '${vars.anything}'}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nvars: {every: 50}\n")
    child = str(tmp_path / "child.yaml")
    spec = load_recipe(child)
    assert spec["trainer"]["callbacks"][0]["init_args"]["every_n_steps"] == 50 and "vars" not in spec
    assert recipe_vars(child) == {"every": 50, "lr": 0.001, "tag": "run", "flag": False, "anything": None}
    spec = load_recipe(child, var_values={"every": "7", "lr": "1", "tag": "123", "flag": "true", "anything": "[1, 2]"})
    assert spec["trainer"]["callbacks"][0]["init_args"]["every_n_steps"] == 7
    assert spec["model"] == {"lr": 1.0, "name": "clip-123", "enabled": True, "x": [1, 2]}
    for name, value, expected in [("every", "7.5", "expected an integer"), ("every", "true", "expected an integer"),
                                  ("lr", "fast", "expected a number"), ("flag", "1", "expected true or false")]:
        with pytest.raises(VLPError, match=f"--vars.{name} .*: {expected} \\(the recipe's default is"):
            load_recipe(child, var_values={name: value})
    with pytest.raises(VLPError, match="has no var 'evry'; did you mean every"):
        load_recipe(child, var_values={"evry": "7"})
    (tmp_path / "bad.yaml").write_text("vars: [1, 2]\n")
    with pytest.raises(VLPError, match="vars must be a mapping of names to values"):
        load_recipe(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize("name", recipe_names())
def test_every_step_checkpoint_of_a_shipped_recipe_follows_its_vars(name):
    callbacks = load_recipe(name)["trainer"].get("callbacks") or []
    checkpoints = [c for c in callbacks if c["class_path"].endswith("StepCheckpoint")]
    if not checkpoints:
        return
    assert {"ckpt_every_n_steps", "ckpt_keep"} <= recipe_vars(name).keys()
    changed = load_recipe(name, var_values={"ckpt_every_n_steps": "7", "ckpt_keep": "5"})["trainer"]["callbacks"]
    assert [c["init_args"] for c in changed if c["class_path"].endswith("StepCheckpoint")] == [
        {"every_n_steps": 7, "keep": 5}]
    others = [c for c in changed if not c["class_path"].endswith("StepCheckpoint")]
    assert others == [c for c in callbacks if not c["class_path"].endswith("StepCheckpoint")]


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_logs_under_default_root_dir(name):
    """``--trainer.default_root_dir DIR`` moves the logger's folder (and so the checkpoints in it);
    an explicit ``--trainer.logger.init_args.save_dir`` still wins."""
    trainer = load_recipe(name)["trainer"]
    assert trainer["default_root_dir"] == "runs" and trainer["logger"]["init_args"]["save_dir"] == "runs"
    moved = load_recipe(name, {"trainer.default_root_dir": "/data/x"})["trainer"]
    assert moved["logger"]["init_args"]["save_dir"] == "/data/x"
    explicit = load_recipe(name, {"trainer.default_root_dir": "/data/x", "trainer.logger.init_args.save_dir": "/y"})
    assert explicit["trainer"]["logger"]["init_args"]["save_dir"] == "/y"

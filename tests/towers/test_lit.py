"""LiT: locked towers stay bit-identical, stay out of the optimiser, keep BN statistics."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from vlp.cli import main, run_cli
from vlp.errors import VLPError
from vlp.eval.tasks import load_task, task_summary
from vlp.towers import TimmImageTower


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory) -> Path:
    """The checkpoint of a short clip_tiny run (test size): the image tower LiT locks."""
    tmp = tmp_path_factory.mktemp("clip")
    cli = run_cli(["fit", "--recipe", "clip_tiny", *TINY, "--trainer.max_steps", "2", "--trainer.logger", "false",
                   "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp)])
    path = tmp / "clip.ckpt"
    cli.trainer.save_checkpoint(path)
    return path


def test_lit_tiny_keeps_the_locked_tower_bit_identical(clip_ckpt, tmp_path):
    source = torch.load(clip_ckpt, weights_only=True)["state_dict"]
    cli = run_cli(["fit", "--recipe", "lit_tiny", *TINY, "--model.towers.image.init_args.init_from", str(clip_ckpt),
                   "--trainer.max_steps", "3", "--trainer.logger", "false", "--trainer.callbacks", "[]",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
    model = cli.model
    assert cli.trainer.global_step == 3
    trunk = {f"towers.image.{k}": v for k, v in model.towers.image.state_dict().items() if k.startswith("trunk.")}
    assert trunk and all(torch.equal(v, source[k]) for k, v in trunk.items())  # loaded and never moved
    optimised = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in model.towers.image.trunk.parameters())
    assert all(id(p) in optimised for p in model.towers.image.proj.parameters())  # the new head learns
    assert not torch.equal(model.towers.image.proj.weight, source["towers.image.proj.weight"])
    text = "towers.text.token_embedding.weight"
    assert not torch.equal(model.state_dict()[text], source[text])


def test_head_keep_loads_and_locks_the_projection(clip_ckpt):
    tower = TimmImageTower("vit_tiny_patch16_224", embed_dim=64, image_size=32, init_from=str(clip_ckpt), lock=True,
                           head="keep", model_kwargs=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2))
    source = torch.load(clip_ckpt, weights_only=True)["state_dict"]
    assert torch.equal(tower.proj.weight, source["towers.image.proj.weight"])
    assert not any(p.requires_grad for p in tower.parameters())


def test_unlocked_groups_leave_the_top_block_trainable(clip_ckpt):
    tower = TimmImageTower("vit_tiny_patch16_224", embed_dim=64, image_size=32, init_from=str(clip_ckpt), lock=True,
                           unlocked_groups=1, model_kwargs=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2))
    trainable = {n for n, p in tower.trunk.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.1.", "norm.")) for n in trainable)
    assert not tower.trunk.blocks[0].attn.qkv.weight.requires_grad


def test_locked_batch_norm_statistics_do_not_move(tmp_path):
    import timm

    trunk = timm.create_model("resnet18", num_classes=0)
    torch.save(trunk.state_dict(), tmp_path / "resnet18.pth")
    tower = TimmImageTower("resnet18", embed_dim=16, pretrained_path=str(tmp_path / "resnet18.pth"), lock=True)
    bn = tower.trunk.bn1
    before = bn.running_mean.clone()
    tower.train()
    assert not bn.training and tower.proj.training
    tower(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(bn.running_mean, before)
    assert torch.equal(tower.trunk.conv1.weight, trunk.conv1.weight)  # the pretrained file was loaded


def test_lock_without_weights_and_bad_checkpoints_are_clear_errors(tmp_path):
    kw = dict(embed_dim=64, image_size=32, model_kwargs=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2))
    with pytest.raises(VLPError, match="lock freezes pretrained weights"):
        TimmImageTower("vit_tiny_patch16_224", lock=True, **kw)
    with pytest.raises(VLPError, match="init_from: checkpoint .* does not exist"):
        TimmImageTower("vit_tiny_patch16_224", init_from=str(tmp_path / "none.ckpt"), **kw)
    torch.save({"state_dict": {"text_tower.x": torch.zeros(1)}}, tmp_path / "text_only.ckpt")
    with pytest.raises(VLPError, match="init_from: checkpoint .* holds no weights of towers.image"):
        TimmImageTower("vit_tiny_patch16_224", init_from=str(tmp_path / "text_only.ckpt"), **kw)


def test_eval_of_a_lit_checkpoint_needs_no_source_file(clip_ckpt, tmp_path, capsys):
    import shutil

    source = tmp_path / "source.ckpt"
    shutil.copy(clip_ckpt, source)
    cli = run_cli(["fit", "--recipe", "lit_tiny", *TINY, "--model.towers.image.init_args.init_from", str(source),
                   "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.callbacks", "[]",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
    cli.trainer.save_checkpoint(tmp_path / "lit.ckpt")
    source.unlink()
    main(["eval", "--ckpt", str(tmp_path / "lit.ckpt"), "--task", "emoji_google_test_category", "--out",
          str(tmp_path / "out")])
    printed = capsys.readouterr().out
    (result,) = (tmp_path / "out").glob("*.json")
    record = json.loads(result.read_text())
    # the checkpoint alone rebuilds the trained model: the in-memory model's numbers, printed
    ref = load_task("emoji_google_test_category").run(cli.model, cli.datamodule.eval_data(0))
    assert record["num_samples"] == 385 and record["metrics"] == pytest.approx(ref["metrics"], abs=1e-6)
    assert f" {task_summary(record)}  (" in printed

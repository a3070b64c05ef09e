"""Sharded checkpoints (directories): DeepSpeed's and FSDP2's (torch.distributed.checkpoint, as
Lightning's ModelParallelStrategy writes them). `--ckpt_path last` finds them and a run killed
with SIGKILL resumes from them with the uninterrupted losses, as does a DeepSpeed run stopped by
SIGTERM (slow, 2 CPU processes); `vlp convert` makes one ordinary checkpoint file of them; `vlp
eval` / `vlp caption` read them directly; a strategy that cannot resume one says so in one line."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import fit_tiny_checkpoint
from tests.test_checkpointing import (
    _assert_resumed_exactly,
    _cmd,
    _losses,
    _run,
    _start_and_wait,
)
from vlp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _as_fsdp2_directory(path: Path, out: Path) -> Path:
    """An ordinary checkpoint rewritten in the layout of Lightning's ModelParallelStrategy:
    the tensors through torch.distributed.checkpoint (one process), the rest in meta.pt."""
    import torch.distributed.checkpoint as dcp

    ckpt = torch.load(path, weights_only=False)
    ckpt.pop("optimizer_states")
    out.mkdir(parents=True)
    dcp.save({"state_dict": ckpt.pop("state_dict")}, checkpoint_id=str(out))
    torch.save(ckpt, out / "meta.pt")
    return out


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
    """A 2-step coca_tiny run: (cli, its checkpoint file, the same as an FSDP2 directory)."""
    tmp = tmp_path_factory.mktemp("coca")
    cli, path = fit_tiny_checkpoint("coca_tiny", tmp)
    return cli, path, _as_fsdp2_directory(path, tmp / "sharded" / "epoch=0-step=2.ckpt")


def test_fsdp2_directory_is_a_candidate_with_its_recipe_step_and_shapes(coca):
    from vlp.checkpointing import find_candidates, shape_mismatch

    cli, _, sharded = coca
    (found,) = find_candidates(sharded.parent)
    assert (found.path, found.kind, found.step, found.recipe) == (sharded, "fsdp2", 2, "coca_tiny")
    assert shape_mismatch(found, cli.model) is None


def test_convert_writes_one_ordinary_checkpoint_that_last_does_not_resume(coca, tmp_path, capsys):
    from vlp.checkpointing import find_candidates

    _, path, sharded = coca
    out = tmp_path / "one.ckpt"
    main(["convert", str(sharded), str(out)])
    assert f"-> {out}" in capsys.readouterr().out
    got, ref = torch.load(out, weights_only=True), torch.load(path, weights_only=False)  # init_from reads weights_only
    assert got["state_dict"].keys() == ref["state_dict"].keys()
    assert all(torch.equal(got["state_dict"][k], v) for k, v in ref["state_dict"].items())
    for key in ("hyper_parameters", "datamodule_hyper_parameters", "global_step"):
        assert got[key] == ref[key], key
    assert got["vlp"]["recipe"] == "coca_tiny" and got["vlp"]["consolidated_from"]["kind"] == "fsdp2"
    assert "optimizer_states" not in got and find_candidates(tmp_path) == []  # weights only: not resumable
    with pytest.raises(SystemExit):
        main(["convert", str(path), str(tmp_path / "two.ckpt")])
    assert "is already one checkpoint file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(sharded), str(out)])
    assert "exists (--overwrite replaces it)" in capsys.readouterr().err


def test_caption_and_eval_read_a_sharded_directory_directly(coca, tmp_path, capsys):
    from tests.test_caption_command import _png
    from vlp.inference import load

    _, path, sharded = coca
    png, _ = _png(tmp_path)
    captions = []
    for ckpt in (path, sharded):
        main(["caption", "--ckpt", str(ckpt), str(png), "--max_length", "4"])
        captions.append(capsys.readouterr().out)
    assert captions[0] == captions[1] and captions[0].startswith(str(png))
    one, two = load(str(path)), load(str(sharded))
    (a, info_a), (b, info_b) = (one.module, one.info), (two.module, two.info)
    assert info_a == info_b and info_b["recipe"] == "coca_tiny"
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    results = []
    for ckpt in (path, sharded):
        results += main_eval(["--ckpt", str(ckpt), "--task", "emoji_google_test_category", "--out", str(tmp_path)])
    assert results[0]["metrics"] == results[1]["metrics"]


def main_eval(argv):
    from vlp.commands.eval import main

    return main(argv)


def test_strategies_refuse_checkpoints_they_cannot_resume(coca):
    from lightning.pytorch.strategies import DDPStrategy

    from vlp.checkpointing import check_resume
    from vlp.errors import VLPError

    _, path, sharded = coca
    with pytest.raises(VLPError, match="an FSDP2 .* checkpoint, a directory; resume it with .*ModelParallelStrategy"):
        check_resume(sharded, DDPStrategy(), 1)
    check_resume(path, DDPStrategy(), 1)  # a file under DDP: fine
    if importlib_find("deepspeed"):
        from vlp.strategies import DeepSpeedStrategy

        with pytest.raises(VLPError, match="a single-file checkpoint cannot be resumed under DeepSpeed"):
            check_resume(path, DeepSpeedStrategy(stage=2), 1)


def importlib_find(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---- SIGKILL and resume on 2 CPU processes

STRATEGIES = {
    "zero2": "vlp_deepspeed_stage_2",
    "fsdp2": "{class_path: lightning.pytorch.strategies.ModelParallelStrategy, "
             "init_args: {data_parallel_size: 2, tensor_parallel_size: 1}}",
}
STEPS = ("--trainer.max_steps", "6", "--trainer.max_epochs", "-1")  # 10 steps an epoch on 2 ranks


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_sigkill_and_resume_of_a_sharded_run_give_the_uninterrupted_losses(tmp_path, name):
    from lightning.pytorch.strategies import DDPStrategy

    from vlp.checkpointing import check_resume, find_candidates
    from vlp.errors import VLPError
    from vlp.inference import load

    if name == "zero2" and not importlib_find("deepspeed"):
        pytest.skip("needs deepspeed")
    extra = (*STEPS, "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", STRATEGIES[name])
    _run(_cmd(tmp_path / "ref", 0, *extra))
    ref = tmp_path / "ref" / "clip_tiny" / "version_0"
    expected = _losses(ref)
    assert sorted(expected) == list(range(6))
    names = sorted(p.name for p in (ref / "checkpoints").iterdir())
    assert names == ["epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "last.ckpt"], names  # no *.partial left
    assert all((ref / "checkpoints" / n).is_dir() for n in names)

    # SIGKILL (both ranks) right after a checkpoint; under DeepSpeed also SIGTERM (preemption:
    # every rank saves its shard after the step, exit status 143)
    for stop in (signal.SIGKILL, signal.SIGTERM) if name == "zero2" else (signal.SIGKILL,):
        run = tmp_path / f"run_{stop.name}"
        ckpts = run / "clip_tiny" / "version_0" / "checkpoints"
        proc = _start_and_wait(_cmd(run, 0, *extra), ckpts, 2)
        os.killpg(proc.pid, stop)
        code = proc.wait(timeout=300)
        assert code == (-signal.SIGKILL if stop == signal.SIGKILL else 128 + signal.SIGTERM), (stop, code)
        killed_at = max(c.step for c in find_candidates(ckpts))
        assert 2 <= killed_at < 6
        resumed = _run(_cmd(run, 0, *extra, "--ckpt_path", "last"))
        assert "resuming from" in resumed.stdout and f"(step {killed_at})" in resumed.stdout
        _assert_resumed_exactly(_losses(run / "clip_tiny" / "version_1"), expected, killed_at)

    # one file out of the directory: the module's own names, the run's facts; eval reads both
    last = ref / "checkpoints" / "last.ckpt"
    out = tmp_path / "one.ckpt"
    done = subprocess.run([sys.executable, "-m", "vlp.cli", "convert", str(last), str(out)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    one = torch.load(out, weights_only=True)
    assert one["global_step"] == 6 and one["vlp"]["recipe"] == "clip_tiny"
    assert one["vlp"]["model"]["towers"] and one["vlp"]["data"] and one["vlp"]["schema"] == 3
    a, info, b = load(str(out)).module, load(str(out)).info, load(str(last)).module
    assert set(one["state_dict"]) == set(a.state_dict()) and not any(k.startswith(("_forward", "module."))
                                                                     for k in one["state_dict"])
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert info["global_step"] == 6
    with pytest.raises(VLPError, match="resume it with"):
        check_resume(last, DDPStrategy(), 2)
    if name == "zero2":
        from vlp.strategies import DeepSpeedStrategy

        with pytest.raises(VLPError, match="this run has 1 process, and ZeRO's optimiser shards are per process"):
            check_resume(last, DeepSpeedStrategy(stage=2), 1)

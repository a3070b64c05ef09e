"""Resume continues exactly: after SIGKILL, after SIGTERM, after an error; in the recipes' own
form (max_epochs) and by steps, with and without data workers, on 1 and 2 ranks. Checkpoints
are atomic, named by the epoch their step ran in, and the last K are kept; `--ckpt_path last`
takes only the same recipe's checkpoints."""

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def ckpt_every(n: int, *more: str) -> str:
    return ("[{class_path: vlp.callbacks.StepCheckpoint, init_args: "
            f"{{every_n_steps: {n}, keep: 2}}}}{''.join(', ' + m for m in more)}]")


def _cmd(save_dir, workers, *extra, recipe="clip_tiny", samples=160, every=2, callbacks=()):
    """A tiny run: 160 samples in batches of 8, so an epoch is 20 steps (1 rank)."""
    return [sys.executable, "-m", "vlp.cli", "fit", "--recipe", recipe, *TINY,
            "--data.num_workers", str(workers), "--data.train_num_samples", str(samples),
            "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.save_dir", str(save_dir),
            "--trainer.callbacks", ckpt_every(every, *callbacks), "--trainer.enable_progress_bar", "false", *extra]


EPOCHS = ("--trainer.max_epochs", "3")  # the recipes' form: 60 steps, no max_steps
DDP = ("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")


def _losses(version_dir: Path) -> dict[int, str]:
    with open(version_dir / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(cmd, expect=0):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=_env(), cwd=ROOT)
    assert out.returncode == expect, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    return out


def _start_and_wait(cmd, ckpts: Path, at_least: int) -> subprocess.Popen:
    """Start ``cmd`` in its own process group; return once a step checkpoint >= ``at_least`` exists."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=ROOT,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(int(p.stem.split("step=")[1]) >= at_least for p in ckpts.glob("epoch=*.ckpt")):
            return proc
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the run ended (or hung) before it could be interrupted")


def _saved_step(ckpts: Path) -> int:
    return max(torch.load(p, weights_only=True)["global_step"] for p in ckpts.glob("*.ckpt"))


def _assert_resumed_exactly(got: dict, expected: dict, start: int) -> None:
    assert min(got) == start and max(got) == max(expected), (min(got), max(got))
    for step, loss in got.items():
        assert loss == expected[step], (step, loss, expected[step])  # bit-exact


@pytest.mark.slow
@pytest.mark.parametrize("workers, ranks, form, kills", [
    (0, 1, EPOCHS, (6, 26)),  # killed in epoch 0 and in epoch 1
    (2, 1, EPOCHS, (6, 26)),
    (1, 2, ("--trainer.max_steps", "14", "--trainer.max_epochs", "-1"), (8,)),  # 10 steps an epoch on 2 ranks
])
def test_sigkill_and_resume_give_the_uninterrupted_losses(tmp_path, workers, ranks, form, kills):
    extra = (*form, *(DDP if ranks > 1 else ()))
    _run(_cmd(tmp_path / "ref", workers, *extra))
    ref = tmp_path / "ref" / "clip_tiny" / "version_0"
    expected = _losses(ref)
    steps = len(expected)
    assert sorted(expected) == list(range(steps)) and steps == (60 if ranks == 1 else 14)
    # the last 2 step checkpoints (+ last.ckpt), named by the epoch the step ran in, no leftovers
    per_epoch = 20 // ranks
    names = sorted(p.name for p in (ref / "checkpoints").iterdir())
    epoch = (steps - 1) // per_epoch
    assert names == [f"epoch={epoch}-step={steps - 2}.ckpt", f"epoch={epoch}-step={steps}.ckpt", "last.ckpt"], names

    for i, kill in enumerate(kills):
        run = tmp_path / f"run{i}"
        ckpts = run / "clip_tiny" / "version_0" / "checkpoints"
        proc = _start_and_wait(_cmd(run, workers, *extra), ckpts, kill)
        os.killpg(proc.pid, signal.SIGKILL)  # every rank and worker
        proc.wait()
        killed_at = _saved_step(ckpts)
        assert kill <= killed_at < steps
        resumed = _run(_cmd(run, workers, *extra, "--ckpt_path", "last"))
        assert "resuming from" in resumed.stdout
        _assert_resumed_exactly(_losses(run / "clip_tiny" / "version_1"), expected, killed_at)


@pytest.mark.slow
def test_sigterm_saves_after_the_step_and_the_run_resumes_exactly(tmp_path):
    """SLURM's preemption: SIGTERM to the whole process group (main process and data workers)."""
    _run(_cmd(tmp_path / "ref", 2, *EPOCHS, every=100))
    expected = _losses(tmp_path / "ref" / "clip_tiny" / "version_0")
    run = tmp_path / "run"
    ckpts = run / "clip_tiny" / "version_0" / "checkpoints"
    # periodic checkpoints every 4 steps only tell the test that training is under way
    proc = _start_and_wait(_cmd(run, 2, *EPOCHS, every=4), ckpts, 8)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stopped_at = _saved_step(ckpts)
    assert 8 <= stopped_at < 60
    assert not (run / "clip_tiny" / "version_0" / "eval.json").exists()  # no end-of-run evaluation
    resumed = _run(_cmd(run, 2, *EPOCHS, "--ckpt_path", "last", every=4))
    assert f"(step {stopped_at})" in resumed.stdout
    _assert_resumed_exactly(_losses(run / "clip_tiny" / "version_1"), expected, stopped_at)


def test_sigint_stops_after_the_step_with_a_checkpoint_and_no_evaluation(tmp_path):
    """Ctrl-C in a terminal: SIGINT to the process group; the run saves, skips the evaluation, exits 130."""
    ckpts = tmp_path / "clip_tiny" / "version_0" / "checkpoints"
    evaluate = "{class_path: vlp.callbacks.EvalTasks, init_args: {tasks: [emoji_google_test_category]}}"
    cmd = _cmd(tmp_path, 2, *EPOCHS, every=4, callbacks=(evaluate,))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpts.glob("epoch=*.ckpt")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    step = _saved_step(ckpts)
    assert 4 <= step < 60
    assert f"stopped by SIGINT after step {step}" in out and "--ckpt_path last" in out
    assert "SIGINT: saving a checkpoint after this step" in err and "Traceback" not in err
    assert "evaluation after step" not in out


def test_the_final_checkpoint_is_written_before_the_end_of_run_evaluation(tmp_path):
    evaluate = "{class_path: vlp.callbacks.EvalTasks, init_args: {tasks: [emoji_google_test_category]}}"
    _run(_cmd(tmp_path, 0, "--trainer.max_steps", "3", "--trainer.max_epochs", "-1", callbacks=(evaluate,)))
    run = tmp_path / "clip_tiny" / "version_0"
    assert (run / "checkpoints" / "epoch=0-step=3.ckpt").stat().st_mtime <= (run / "eval.json").stat().st_mtime
    assert json.loads((run / "eval.json").read_text())["step"] == 3


class FailAt(Callback):
    """Raises in the middle of optimiser step ``step`` (after the forward, before the update)."""

    def __init__(self, step: int):
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step and os.environ.get("VLP_TEST_FAIL") == "1":
            raise RuntimeError(f"planted failure at step {self.step}")


@pytest.mark.slow
def test_an_error_saves_the_last_completed_step_and_the_run_resumes_exactly(tmp_path):
    # flip_tiny: its masks draw from the RNG in the step, so the saved RNG state matters too
    fail = "{class_path: tests.test_checkpointing.FailAt, init_args: {step: 7}}"
    cmd = lambda d, *more: _cmd(d, 0, *EPOCHS, *more, recipe="flip_tiny", every=100, callbacks=(fail,))  # noqa
    _run(cmd(tmp_path / "ref"))
    expected = _losses(tmp_path / "ref" / "flip_tiny" / "version_0")
    run = tmp_path / "run"
    out = subprocess.run(cmd(run), capture_output=True, text=True, timeout=400, env={**_env(), "VLP_TEST_FAIL": "1"},
                         cwd=ROOT)
    assert out.returncode != 0 and "planted failure at step 7" in out.stderr
    assert "saved step 7" in out.stderr
    assert _saved_step(run / "flip_tiny" / "version_0" / "checkpoints") == 7
    _run(cmd(run, "--ckpt_path", "last"))
    _assert_resumed_exactly(_losses(run / "flip_tiny" / "version_1"), expected, 7)


@pytest.mark.slow
def test_ckpt_path_last_takes_only_the_same_recipe(tmp_path):
    steps = ("--trainer.max_steps", "4", "--trainer.max_epochs", "-1")
    _run(_cmd(tmp_path, 0, *steps))  # clip_tiny: runs/clip_tiny/version_0, step 4
    # a variant made with `extends` logs under the same name; same shapes, so only the recipe tells
    variant = tmp_path / "variant.yaml"
    variant.write_text("description: a variant\nextends: clip_tiny\nmodel: {optim: {lr: 1.0e-4}}\n")
    out = _run(_cmd(tmp_path, 0, *steps, "--ckpt_path", "last", recipe=str(variant)))
    assert f"no checkpoint of recipe {variant}" in out.stdout and "starting from scratch" in out.stdout
    assert "other recipes:" in out.stdout and "recipe clip_tiny" in out.stdout
    assert min(_losses(tmp_path / "clip_tiny" / "version_1")) == 0
    # the variant's own checkpoint is now the newest of its recipe; clip_tiny still resumes its own
    out = _run(_cmd(tmp_path, 0, "--trainer.max_steps", "6", "--trainer.max_epochs", "-1", "--ckpt_path", "last"))
    assert "clip_tiny/version_0/checkpoints/" in out.stdout and "(step 4)" in out.stdout
    # the same recipe at other sizes: one line naming the checkpoint and the first difference
    out = _run(_cmd(tmp_path, 0, *steps, "--model.towers.text.width", "32", "--model.towers.text.embed_dim", "64",
                    "--ckpt_path", "last"), expect=2)
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("vlp: error: --ckpt_path last: the newest checkpoint of recipe clip_tiny"), line
    assert "does not fit this model" in line and ": checkpoint [" in line and ", model [" in line, line
    assert "Traceback" not in out.stderr


def test_ckpt_path_last_without_checkpoint_starts_from_scratch(tmp_path):
    out = _run(_cmd(tmp_path, 0, "--trainer.max_steps", "2", "--ckpt_path", "last"))
    assert "no checkpoint of recipe clip_tiny under" in out.stdout and "starting from scratch" in out.stdout


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    from vlp.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_checkpoint_files_follow_the_umask(tmp_path):
    from vlp.checkpointing import AtomicCheckpointIO

    old = os.umask(0o027)
    try:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == 0o640  # not mkstemp's 0600


@pytest.mark.slow
def test_resampled_stream_resumes_at_a_fresh_position_and_says_so(tmp_path):
    steps = ("--trainer.max_epochs", "-1", "--data.resampled", "true")
    _run(_cmd(tmp_path, 0, *steps, "--trainer.max_steps", "4"))
    resumed = _run(_cmd(tmp_path, 0, *steps, "--trainer.max_steps", "6", "--ckpt_path", "last"))
    assert "data.resampled: the stream resumes at a fresh position seeded from (seed, epoch 0, step 4)" in \
        resumed.stderr
    assert set(_losses(tmp_path / "clip_tiny" / "version_1")) == {4, 5}

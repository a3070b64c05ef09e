"""Resume after SIGKILL continues exactly; checkpoints are atomic and the last K are kept."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

CKPT_EVERY_2 = ("[{class_path: vlp.callbacks.StepCheckpoint, init_args: "
                "{every_n_steps: 2, keep: 2}}]")


def _cmd(save_dir, workers, max_steps, *extra):
    return [sys.executable, "-m", "vlp.cli", "fit", "--recipe", "clip_tiny", *TINY,
            "--data.num_workers", str(workers), "--data.train_num_samples", "160",
            "--trainer.max_steps", str(max_steps), "--trainer.max_epochs", "-1", "--trainer.log_every_n_steps", "1",
            "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.callbacks", CKPT_EVERY_2,
            "--trainer.enable_progress_bar", "false", *extra]


def _losses(version_dir: Path) -> dict[int, str]:
    with open(version_dir / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("workers, ranks", [(0, 1), (2, 1), (1, 2)])
def test_sigkill_and_resume_give_the_uninterrupted_losses(tmp_path, workers, ranks):
    steps = 30 if ranks == 1 else 14  # 160 samples / (batch 8 x ranks) an epoch: the run crosses an epoch end
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"] if ranks > 1 else []
    ref = subprocess.run(_cmd(tmp_path / "ref", workers, steps, *ddp), capture_output=True, text=True, timeout=300,
                         env=_env())
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = _losses(tmp_path / "ref" / "clip_tiny" / "version_0")
    assert len(expected) == steps
    # keep the last 2 step checkpoints (+ last.ckpt), written without leftovers
    ckpts = sorted(p.name for p in (tmp_path / "ref" / "clip_tiny" / "version_0" / "checkpoints").iterdir())
    assert ckpts == [f"epoch=1-step={steps - 2}.ckpt", f"epoch=1-step={steps}.ckpt", "last.ckpt"], ckpts

    # the same run, killed with SIGKILL (every rank) once a checkpoint after step 8 exists
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(run, workers, steps, *ddp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(int(p.stem.split("step=")[1]) >= 8 for p in run.glob("clip_tiny/version_0/checkpoints/epoch=*.ckpt")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(torch.load(p, weights_only=True)["global_step"]
                    for p in run.glob("clip_tiny/version_0/checkpoints/*.ckpt"))
    assert 8 <= killed_at < steps

    resumed = subprocess.run(_cmd(run, workers, steps, *ddp, "--ckpt_path", "last"), capture_output=True,
                             text=True, timeout=300, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    got = _losses(run / "clip_tiny" / "version_1")
    assert min(got) == killed_at and max(got) == steps - 1
    for step, loss in got.items():
        assert loss == expected[step], (step, loss, expected[step])  # bit-exact


def test_ckpt_path_last_without_checkpoint_starts_from_scratch(tmp_path):
    out = subprocess.run(_cmd(tmp_path, 0, 2, "--ckpt_path", "last"), capture_output=True, text=True, timeout=300,
                         env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no checkpoint under" in out.stdout and "starting from scratch" in out.stdout


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


def test_resampled_stream_resumes_at_a_fresh_position_and_says_so(tmp_path):
    first = subprocess.run(_cmd(tmp_path, 0, 4, "--data.resampled", "true"), capture_output=True, text=True,
                           timeout=300, env=_env())
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = subprocess.run(_cmd(tmp_path, 0, 6, "--data.resampled", "true", "--ckpt_path", "last"),
                             capture_output=True, text=True, timeout=300, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "data.resampled: the stream resumes at a fresh position seeded from (seed, epoch 0, step 4)" in \
        resumed.stderr
    assert set(_losses(tmp_path / "clip_tiny" / "version_1")) == {4, 5}

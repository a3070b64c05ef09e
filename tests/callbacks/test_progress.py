"""ProgressLog (lines for runs without a terminal) and the model summary's FLOPs at `vlp fit`."""

import re
import sys

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import TINY
from tests.test_module import _batch
from vlp.callbacks import ProgressLog
from vlp.callbacks.progress import default_every_n_steps
from vlp.cli import run_cli
from vlp.fit_cli import progress_defaults

LINE = re.compile(r"^step (\d+)(/\d+)?  epoch \d+(/\d+)?  loss (\S+)  samples/s (\S+)  elapsed \S+  eta \S+$")


def _fit(module, log, batches=10, accumulate=1, max_steps=5):
    trainer = Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", callbacks=[log],
                      accumulate_grad_batches=accumulate)
    data = [_batch(8, seed=i) for i in range(batches)]
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))


def test_lines_every_n_steps_and_at_the_end_with_the_interval_mean_loss(tiny_module, capsys):
    losses = []
    step = tiny_module.training_step

    def recording(batch, batch_idx):
        loss = step(batch, batch_idx)
        losses.append(float(loss.detach()))
        return loss

    tiny_module.training_step = recording
    # 10 batches, 2 per optimiser step: steps 1..5; lines at 2, 4 and the last step
    _fit(tiny_module, ProgressLog(every_n_steps=2), accumulate=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(LINE.match(ln) for ln in lines), lines
    matches = [LINE.match(ln) for ln in lines]
    assert [m.group(1) + m.group(2) for m in matches] == ["2/5", "4/5", "5/5"]
    # the loss is the mean over the batches of the interval, not divided by the accumulation
    for m, chunk in zip(matches, (losses[0:4], losses[4:8], losses[8:10])):
        assert float(m.group(4)) == pytest.approx(sum(chunk) / len(chunk), abs=1e-4)
        assert float(m.group(5)) > 0
    assert lines[-1].endswith("eta 0:00:00")


@pytest.mark.parametrize("when, tty, prints", [("no_tty", True, False), ("always", True, True),
                                               ("never", False, False), ("no_tty", False, True)])
def test_when_a_terminal_is_attached(tiny_module, capsys, monkeypatch, when, tty, prints):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    _fit(tiny_module, ProgressLog(every_n_steps=1, when=when), batches=2, max_steps=2)
    out = capsys.readouterr().out
    assert (out.count("step ") == 2) if prints else out == ""


def test_default_interval_is_five_percent_capped_at_50():
    assert [default_every_n_steps(n) for n in (1, 19, 40, 330, 1000, 10**6, float("inf"))] == [1, 1, 2, 16, 50, 50, 50]


def test_vlp_fit_adds_a_progress_log_and_drops_the_default_bar_without_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    added = progress_defaults(None)
    assert isinstance(added["callbacks"][0], ProgressLog) and added["enable_progress_bar"] is False
    bar = TQDMProgressBar()  # a bar the recipe lists stays
    kept = progress_defaults([bar])
    assert "enable_progress_bar" not in kept and kept["callbacks"][0] is bar
    assert isinstance(kept["callbacks"][1], ProgressLog)
    assert progress_defaults([ProgressLog(when="never")]) == {}  # listed, and silent: the bar stays
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert "enable_progress_bar" not in progress_defaults(None)


def test_vlp_fit_without_a_terminal_prints_steps_and_the_summary_counts_flops(tmp_path, capsys):
    cli = run_cli(["fit", "--recipe", "clip_tiny", *TINY, "--trainer.max_steps", "3", "--trainer.logger", "false",
                   "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                   "--trainer.default_root_dir", str(tmp_path)])
    out = capsys.readouterr().out
    steps = [m.group(1) + m.group(2) for m in map(LINE.match, out.splitlines()) if m]
    assert steps == ["1/3", "2/3", "3/3"]
    assert cli.trainer.progress_bar_callback is None
    # "Total FLOPs": one sample's forward (towers, eval mode), as Lightning's summary prints it
    assert "Total FLOPs: 0" not in out
    value, unit = re.search(r"Total FLOPs: ([\d.]+) ([KMGT])", out).groups()
    printed = float(value) * {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[unit]
    data, model = cli.datamodule, cli.model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model({"image": torch.zeros(1, 3, data.image_size, data.image_size), "text": data.tokenizer(["a caption"])})
    assert printed == pytest.approx(counter.get_total_flops(), rel=0.05)

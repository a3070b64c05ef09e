"""Validation on a run's held-out samples (data.holdout) or data.val_shards: the eval side reads
exactly the complement of what training reads, in equal shares on several ranks; the EvalTasks
callback evaluates its val tasks, logs them under val/ and keeps them apart in eval.json."""

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.eval.shards import eval_shard
from vlp.data.eval_set import EvalData, EvalStream, ValidationSet, set_samples
from vlp.data.holdout import Holdout
from vlp.data.tar_reader import tar_samples
from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.eval.validation import validation_tasks


def test_the_eval_stream_reads_the_held_out_samples_in_equal_shares(tmp_path):
    shards = [eval_shard(tmp_path / "a.tar", 40), eval_shard(tmp_path / "b.tar", 30)]
    holdout = Holdout(0.3, 5)
    keys = [s["__key__"] for url in shards for s in tar_samples(url)]
    held = [k for k in keys if holdout.held_out(k)]
    assert [s["__key__"] for s in set_samples(shards, holdout)] == held and 0 < len(held) < len(keys)
    seen, sizes = [], []
    for rank in range(3):
        stream = EvalStream(shards, lambda im: torch.zeros(1), TextTokenizer(context_length=8), 4,
                            label_field="label", rank=rank, world=3, holdout=holdout)
        batches = list(stream)
        sizes.append([len(b["index"]) for b in batches])
        seen += [i for b in batches for i in b["index"].tolist()]
    assert len(set(map(len, sizes))) == 1 and len({sum(s) for s in sizes}) == 1  # the same batches on every rank
    assert sorted(i for i in seen if i >= 0) == list(range(len(held)))
    assert seen.count(-1) == 3 * -(-len(held) // 3) - len(held)


def test_validation_tasks_follow_the_data_settings(tmp_path):
    shard = eval_shard(tmp_path / "a.tar", 30)
    holdout = Holdout(0.5, 0)
    val = ValidationSet([shard], holdout, ["labels.en"], ["a {}"])
    retrieval, = validation_tasks(["retrieval"], val)
    assert retrieval.name == "retrieval" and retrieval.captions == ["labels.en"] and retrieval.holdout == holdout
    assert retrieval.dataset() == {"shards": [shard], "holdout": {"fraction": 0.5, "seed": 0}}
    zeroshot, task = validation_tasks(["zeroshot:label", "emoji_google_test_category"], val)
    assert zeroshot.name == "zeroshot_label" and zeroshot.label_field == "label" and zeroshot.templates == ["a {}"]
    assert task.name == "emoji_google_test_category" and task.shards == [shard] and task.holdout == holdout
    # without specs: retrieval, and zero-shot on the category when the json has one (the emoji data does)
    assert [t.name for t in validation_tasks(None, val)] == ["retrieval"]
    emoji = ValidationSet([str(Path(__file__).parents[2] / "vlp/data/emoji/google/test-000000.tar")],
                          holdout, ["txt"])
    assert [t.name for t in validation_tasks(None, emoji)] == ["retrieval", "zeroshot_category"]
    with pytest.raises(VLPError, match=r"^validation task 'retreival': unknown eval task 'retreival'"):
        validation_tasks(["retreival"], val)
    with pytest.raises(VLPError, match=r"^the validation set is empty: data.holdout \{'fraction': 1e-09"):
        validation_tasks(None, ValidationSet([shard], Holdout(1e-9), ["txt"]))


def test_a_task_on_held_out_samples_evaluates_only_those(tiny_module, tmp_path):
    from vlp.eval import Retrieval

    shard = eval_shard(tmp_path / "a.tar", 24)
    data = EvalData(TextTokenizer(context_length=16), 32)
    held = [s for s in set_samples([shard], Holdout(0.4, 2))]
    result = Retrieval(shard, captions=["txt"], holdout={"fraction": 0.4, "seed": 2}).run(tiny_module, data,
                                                                                          batch_size=5)
    assert result["num_samples"] == len(held) and result["dataset"]["holdout"] == {"fraction": 0.4, "seed": 2}
    # the same as the task on a set made of those samples
    from vlp.data.shard_writer import write_shard

    write_shard(tmp_path / "held.tar", [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
                                        for s in held])
    alone = Retrieval(str(tmp_path / "held.tar"), captions=["txt"]).run(tiny_module, data, batch_size=5)
    assert result["metrics"] == pytest.approx(alone["metrics"])


def test_val_tasks_need_a_validation_set(tmp_path):
    from vlp.callbacks import EvalTasks
    from vlp.data.datamodule import VLPDataModule

    dm = VLPDataModule(num_workers=0, image_size=32, context_length=16)
    callback = EvalTasks(tasks=[], val_tasks=["retrieval"])
    with pytest.raises(VLPError, match=r"^EvalTasks.val_tasks need a validation set: set data.holdout"):
        callback.setup(SimpleNamespace(datamodule=dm), None, "fit")
    callback = EvalTasks(tasks=["emoji_google_test_category"])  # no validation set: no val tasks, periodic = tasks
    callback.setup(SimpleNamespace(datamodule=dm), None, "fit")
    assert callback.val_tasks == [] and callback.periodic_tasks == callback.tasks


def test_vlp_fit_evaluates_val_tasks_on_the_hold_out_and_keeps_them_apart(tmp_path, capsys):
    from tests.conftest import TINY
    from vlp.cli import main

    callbacks = ("[{class_path: vlp.callbacks.EvalTasks, init_args: {tasks: [emoji_twitter_test_category], "
                 "every_n_steps: 2}}]")
    main(["fit", "--recipe", "clip_tiny", *TINY, "--trainer.max_steps", "4", "--trainer.callbacks", callbacks,
          "--data.holdout", "{fraction: 0.05, seed: 0}", "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"])
    out = capsys.readouterr().out
    logs = next(line for line in out.splitlines() if line.startswith("logs: ")).split(": ", 1)[1]
    assert "validation after step 4:" in out and "held out" in next(ln for ln in out.splitlines()
                                                                   if ln.startswith("data: "))
    saved = json.loads((Path(logs) / "eval.json").read_text())
    assert [r["task"] for r in saved["results"]] == ["emoji_twitter_test_category"]
    assert [r["task"] for r in saved["val_results"]] == ["retrieval", "zeroshot_category"]
    assert saved["val_results"][0]["dataset"]["holdout"] == {"fraction": 0.05, "seed": 0}
    assert 30 < saved["val_results"][0]["num_samples"] < 120  # ~5% of the 1521 training samples
    history = saved["history"]
    # the periodic evaluation at step 2 looks at validation only; the test task runs once, at the end
    assert [h["step"] for h in history] == [2, 4]
    assert history[0]["metrics"] == {} and sorted(history[0]["val_metrics"]) == ["retrieval", "zeroshot_category"]
    assert list(history[1]["metrics"]) == ["emoji_twitter_test_category"]
    assert history[1]["val_metrics"]["retrieval"] == saved["val_results"][0]["metrics"]
    with open(Path(logs) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_steps = sorted(int(r["step"]) for r in rows if r.get("val/retrieval/image_to_text_R@1"))
    test_steps = sorted(int(r["step"]) for r in rows if r.get("eval/emoji_twitter_test_category/top1"))
    assert val_steps == [2, 4] and test_steps == [4]
    assert any(r.get("val/zeroshot_category/top1") for r in rows)
    assert any(r.get("data/heldout") for r in rows)


@pytest.mark.slow
def test_two_processes_train_a_mixed_stream_with_a_hold_out_validate_as_one_process_and_resume_exactly(tmp_path):
    """2 DDP processes (gloo) on both built-in styles mixed 0.7 / 0.3 with a 10% hold-out: the
    val metrics in eval.json equal a one-process evaluation of the final weights on the same
    held-out samples; the summary counts both ranks' samples by source; stopped at step 3 and
    resumed, the run gives the uninterrupted run's losses."""
    from tests.conftest import TINY
    from tests.data.test_sources import MIX
    from tests.processes import STEPS, fit_two_processes
    from vlp.cli import run_cli
    from vlp.inference import load

    steps = STEPS + 2
    args = ["--data.train_shards", MIX, "--data.holdout", "0.1", "--data.num_workers", "1",
            "--trainer.max_steps", str(steps), "--trainer.enable_checkpointing", "true", "--trainer.callbacks",
            "[{class_path: vlp.callbacks.StepCheckpoint, init_args: {every_n_steps: 3, keep: 3}}, "
            "{class_path: vlp.callbacks.EvalTasks, init_args: {tasks: [], val_tasks: [retrieval, 'zeroshot:category'], "
            "batch_size: 16}}]"]
    out: list[str] = []
    whole = fit_two_processes(tmp_path / "whole", *args, stdout=out)
    assert sorted(whole) == list(range(steps))
    data = next(ln for ln in out[0].splitlines() if ln.startswith("data: "))
    read, google, twitter, held = map(int, re.search(
        r"^data: (\d+) samples read; .*from sources google (\d+), twitter (\d+); held out (\d+)", data).groups())
    # both ranks' batches of 8, by source; the held-out samples are read but not trained on
    assert read == google + twitter == steps * 8 * 2 and held > 0
    assert google > twitter > 0

    logs = tmp_path / "whole" / "clip_tiny" / "version_0"
    saved = json.loads((logs / "eval.json").read_text())["val_results"]
    assert [r["task"] for r in saved] == ["retrieval", "zeroshot_category"]
    # the same evaluation in this one process, from the final checkpoint
    cli = run_cli(["--recipe", "clip_tiny", *TINY, "--trainer.logger", "false", "--data.train_shards", MIX, "--data.holdout", "0.1",
                   "--data.num_workers", "0"], run=False)
    ckpt = max(logs.glob("checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    module = load(ckpt).module
    tasks = validation_tasks(["retrieval", "zeroshot:category"], cli.datamodule.validation_set())
    mine = [t.run(module, cli.datamodule.eval_data(0), 0, 1, batch_size=64) for t in tasks]
    for a, b in zip(saved, mine):
        assert a["num_samples"] == b["num_samples"] > 100  # ~10% of both styles' 3042 training samples
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6), a["task"]

    fit_two_processes(tmp_path / "run", *args, "--trainer.max_steps", "3")
    resumed = fit_two_processes(tmp_path / "run", *args, "--ckpt_path", "last")
    assert sorted(resumed) == list(range(3, steps))
    for step, loss in resumed.items():
        assert loss == pytest.approx(whole[step], rel=1e-6), (step, loss, whole[step])

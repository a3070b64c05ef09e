"""`vlp eval` (vlp.commands.eval, the work in vlp.eval.runner): checkpoints of `vlp fit`
evaluated on tasks, one JSON result per (checkpoint, task) equal to the in-memory model's, the
printed lines and tables holding the results' exact values, one-line errors, the task list."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from tests.conftest import fit_tiny_checkpoint

from vlp.cli import main
from vlp.eval.tasks import load_task, task_summary, tasks_root

# the headline metrics of each kind, in order (the rows of the markdown table)
HEADLINE = {"retrieval": ["image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"],
            "zeroshot": ["top1", "top5", "mean_per_class_recall"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step clip_tiny run at test size (32-px images) and its checkpoint."""
    return fit_tiny_checkpoint("clip_tiny", tmp_path_factory.mktemp("fit"))


def test_eval_writes_one_json_per_task_equal_to_the_in_memory_model(trained, tmp_path, capsys):
    """One JSON per task holding the in-memory model's metrics; a printed line per task with the
    JSON's headline values and path, then the table of those values in %."""
    cli, ckpt = trained
    tasks = ["emoji_google_test_retrieval", "emoji_google_test_category"]
    main(["eval", "--ckpt", str(ckpt), "--task", tasks[0], "--task", tasks[1], "--out", str(tmp_path),
          "--batch_size", "128"])
    printed = capsys.readouterr().out.splitlines()
    files = sorted(tmp_path.glob("*.json"))
    assert [f.name for f in files] == [f"fit0__run__last--{t}.json" for t in sorted(tasks)]
    data = cli.datamodule.eval_data(0)
    records = [json.loads(f.read_text()) for f in files]
    for f, record in zip(files, records):
        assert record["model"]["recipe"] == "clip_tiny" and record["model"]["global_step"] == 2
        assert record["checkpoint"] == str(ckpt.resolve()) and record["num_samples"] == 385
        assert record["label"] == "fit0/run/last" and record["task"] == f.name.split("--")[1][:-5]
        assert {"time", "seconds", "dataset", "kind", "label"} <= record.keys()
        # the checkpoint round trip (towers, tokenizer, 32-px eval size) gives the same numbers
        ref = load_task(record["task"]).run(cli.model, data, batch_size=128)
        assert record["metrics"] == pytest.approx(ref["metrics"], abs=1e-6)
        assert (f"fit0/run/last  {record['task']:<42} {task_summary(record)}  ({record['seconds']:.1f} s) -> {f}"
                in printed)
    table = ["Metrics in % (vlp eval --table).", "", "| task | metric | fit0/run/last |", "|---|---|---|"]
    table += [f"| {r['task']} | {m} | {100 * r['metrics'][m]:.1f} |" for r in records for m in HEADLINE[r["kind"]]]
    assert printed[-len(table):] == table


def test_eval_table_merges_checkpoints(trained, tmp_path, capsys):
    """The markdown table: the headline metrics in % with one decimal, a column per label; the
    CSV: every metric, as saved; both hold exactly the JSONs' values."""
    _, ckpt = trained
    for name in ("first", "second"):
        main(["eval", "--ckpt", str(ckpt), "--task", "emoji_google_test_retrieval", "--out", str(tmp_path),
              "--name", name])
    capsys.readouterr()
    main(["eval", "--table", str(tmp_path)])
    markdown = capsys.readouterr().out
    first, second = (json.loads((tmp_path / f"{name}--emoji_google_test_retrieval.json").read_text())["metrics"]
                     for name in ("first", "second"))
    assert second == first  # same checkpoint, same numbers
    assert list(first) == [f"{way}_R@{k}" for way in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
    expected = ("Metrics in % (vlp eval --table).\n\n| task | metric | first | second |\n|---|---|---|---|\n" +
                "".join(f"| emoji_google_test_retrieval | {m} | {100 * first[m]:.1f} | {100 * first[m]:.1f} |\n"
                        for m in HEADLINE["retrieval"]))
    assert markdown == expected + f"written: {tmp_path / 'results.md'}, {tmp_path / 'results.csv'}\n"
    assert (tmp_path / "results.md").read_text() == expected
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["task", "metric", "first", "second"]
    assert [(r[0], r[1], float(r[2]), float(r[3])) for r in rows[1:]] == [
        ("emoji_google_test_retrieval", m, v, v) for m, v in first.items()]


@pytest.mark.parametrize("argv, message", [
    (["--ckpt", "nope.ckpt", "--task", "emoji_google_test_retrieval"], "checkpoint nope.ckpt does not exist"),
    (["--ckpt", "CKPT", "--task", "emoji_google_test_retreival"], "unknown eval task 'emoji_google_test_retreival'"),
    (["--ckpt", "CKPT", "--task", "imagenet_*"], "task pattern 'imagenet_*' matches no built-in task"),
    (["--ckpt", "CKPT"], "give --ckpt PATH and --task NAME"),
    (["--ckpt", "PLAIN", "--task", "emoji_google_test_retrieval"], "holds no vlp model config"),
    (["--table", "missing_dir"], "is not a folder"),
])
def test_eval_errors_are_one_line(trained, tmp_path, capsys, argv, message):
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    argv = [str(trained[1]) if a == "CKPT" else str(tmp_path / "plain.ckpt") if a == "PLAIN" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(["eval", *argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlp: error: ") and message in err and "\n" not in err


def test_eval_list_names_the_builtin_tasks():
    """One line per task file in vlp/data/tasks, by name: the name, padded, and its kind."""
    import yaml

    out = subprocess.run([sys.executable, "-m", "vlp.cli", "eval", "--list"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    kinds = {"vlp.eval.Retrieval": "retrieval", "vlp.eval.ZeroShotClassification": "zeroshot",
             "vlp.eval.LinearProbe": "linear_probe", "vlp.eval.FewShot": "few_shot",
             "vlp.eval.Captioning": "captioning"}
    files = sorted(tasks_root().glob("*.yaml"))
    assert len(files) > 20 and "emoji_google_category_few_shot.yaml" in [f.name for f in files]
    expected = [f"{f.stem:<42} {kinds[yaml.safe_load(f.read_text())['class_path']]}" for f in files]
    assert out.stdout.splitlines() == expected

"""`vlp eval`: checkpoints of `vlp fit` evaluated on tasks, JSON results, merged tables."""

import json
import subprocess
import sys

import pytest
import torch
from tests.conftest import fit_tiny_checkpoint

from vlp.cli import main
from vlp.eval.tasks import load_task


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step clip_tiny run at test size (32-px images) and its checkpoint."""
    return fit_tiny_checkpoint("clip_tiny", tmp_path_factory.mktemp("fit"))


def test_eval_writes_one_json_per_task_equal_to_the_in_memory_model(trained, tmp_path, capsys):
    cli, ckpt = trained
    tasks = ["emoji_google_test_retrieval", "emoji_google_test_category"]
    main(["eval", "--ckpt", str(ckpt), "--task", tasks[0], "--task", tasks[1], "--out", str(tmp_path),
          "--batch_size", "128"])
    printed = capsys.readouterr().out
    assert "fit0/run/last" in printed and "image_to_text_R@1" in printed and "top1" in printed
    files = sorted(tmp_path.glob("*.json"))
    assert [f.name for f in files] == [f"fit0__run__last--{t}.json" for t in sorted(tasks)]
    data = cli.datamodule.eval_data(0)
    for f in files:
        record = json.loads(f.read_text())
        assert record["model"]["recipe"] == "clip_tiny" and record["model"]["global_step"] == 2
        assert record["checkpoint"] == str(ckpt.resolve()) and record["num_samples"] == 385
        assert {"time", "seconds", "dataset", "kind", "label"} <= record.keys()
        # the checkpoint round trip (towers, tokenizer, 32-px eval size) gives the same numbers
        ref = load_task(record["task"]).run(cli.model, data, batch_size=128)
        assert record["metrics"] == pytest.approx(ref["metrics"], abs=1e-6)


def test_eval_table_merges_checkpoints(trained, tmp_path, capsys):
    _, ckpt = trained
    for name in ("first", "second"):
        main(["eval", "--ckpt", str(ckpt), "--task", "emoji_google_test_retrieval", "--out", str(tmp_path),
              "--name", name])
    capsys.readouterr()
    main(["eval", "--table", str(tmp_path)])
    markdown = capsys.readouterr().out
    assert "| task | metric | first | second |" in markdown
    assert "| emoji_google_test_retrieval | image_to_text_R@1 |" in markdown
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "task,metric,first,second"
    assert len(rows) == 1 + 6  # R@1/5/10 both ways
    r1 = next(r for r in rows if r.startswith("emoji_google_test_retrieval,image_to_text_R@1,")).split(",")
    assert r1[2] == r1[3]  # same checkpoint, same numbers
    assert (tmp_path / "results.md").read_text().splitlines()[2] == markdown.splitlines()[2]


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
    out = subprocess.run([sys.executable, "-m", "vlp.cli", "eval", "--list"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "emoji_google_category_few_shot" in out.stdout and "linear_probe" in out.stdout

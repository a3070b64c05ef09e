import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from vlp.cli import main, run_cli
from vlp.eval.tasks import task_summary
from vlp.objectives import Objective


class NeedsViews(Objective):
    """An objective that reads extra augmented views the data pipeline does not make."""

    reads = frozenset({"image.pooled", "views.features"})
    default_name = "views"

    def forward(self, outputs, batch):
        raise AssertionError("must not be reached: the combination is refused before training")


def _error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    # Lightning's own start-up notes ("INFO: Seed set to 0") may come first; then exactly one line
    lines = [ln for ln in err.splitlines() if not ln.startswith("INFO: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_unknown_recipe(capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tyni"])
    assert line.startswith("vlp: error: unknown recipe 'clip_tyni'; did you mean: clip_tiny")
    assert line.endswith("(or give a path to a YAML file)")


def test_unknown_override_key(capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", "--data.batch_sise", "16"])
    assert line.startswith("vlp: error:") and "batch_sise" in line


def test_unknown_key_inside_a_part(capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", "--model.towers.text.widht", "3"])
    assert line == "vlp: error: unknown option --model.towers.text.widht: no such key"


def test_wrong_type_inside_a_dataclass(capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", "--model.optim.lr", "fast"])
    assert "model.optim" in line and "lr" in line and "fast" in line


def test_override_of_the_wrong_type(capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", "--data.batch_size", "sixteen"])
    assert "data.batch_size" in line and "sixteen" in line


def test_shard_path_matching_no_file(capsys, tmp_path):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", "--data.train_shards", f"{tmp_path}/x-{{0..3}}.tar"])
    assert line == f"vlp: error: shard path '{tmp_path}/x-{{0..3}}.tar' matches no file"


def test_tokenizer_longer_than_the_text_tower(capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", *TINY, "--model.towers.text.context_length", "8",
                                "--trainer.max_steps", "1", "--trainer.logger", "false"])
    assert line == ("vlp: error: model.towers.text: context_length 8 is shorter than the tokenizer's "
                    "context_length 16")


def test_the_tokenizers_pad_id_reaches_the_text_tower(tmp_path):
    """An XLM-R-like tokenizer (pad 1, start 0) given as data: the tower masks with 1, found
    among the model's parts (no tower named in the code)."""
    from tests.data.test_text_spec import xlmr_like_tokenizer
    from vlp.towers import TextTransformer

    xlmr_like_tokenizer(tmp_path)
    tokenizer = ("{class_path: vlp.data.tokenizer.TextTokenizer, "
                 f"init_args: {{path: {tmp_path}/xlmr_like.json, context_length: 16}}}}")
    cli = run_cli(["--recipe", "clip_tiny", *TINY, "--data.tokenizer", tokenizer, "--trainer.logger", "false"],
                  run=False)
    towers = [m for m in cli.model.modules() if isinstance(m, TextTransformer)]
    assert len(towers) == 1 and towers[0].pad_id == 1 and towers[0].text_spec is cli.datamodule.tokenizer.spec


def test_a_text_tower_pad_id_other_than_the_tokenizers(capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", *TINY, "--model.towers.text.pad_id", "1",
                                "--trainer.max_steps", "1", "--trainer.logger", "false"])
    assert line == ("vlp: error: model.towers.text: pad_id 1 differs from the tokenizer's pad id 0 "
                    "(leave pad_id unset to take the tokenizer's)")


def test_default_root_dir_holds_logs_and_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipes' default root is ./runs: nothing may land there
    root = tmp_path / "elsewhere"
    every_step = "[{class_path: vlp.callbacks.StepCheckpoint, init_args: {every_n_steps: 1}}]"
    main(["fit", "--recipe", "clip_tiny", *TINY, "--trainer.max_steps", "2", "--trainer.callbacks", every_step,
          "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(root)])
    out = capsys.readouterr().out
    ckpt = Path(next(line for line in out.splitlines() if line.startswith("checkpoint: ")).split(": ", 1)[1])
    logs = Path(next(line for line in out.splitlines() if line.startswith("logs: ")).split(": ", 1)[1])
    assert logs == root / "clip_tiny" / "version_0" and (logs / "metrics.csv").is_file()
    assert ckpt.parent == logs / "checkpoints" and ckpt.is_file()
    assert not (tmp_path / "runs").exists()


def test_overrides_and_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--recipe", "clip_tiny", "--trainer.max_steps", "50", "--model.towers.text.width", "32",
              "--data.batch_size", "16", "--data.image_size", "48", "--print_config"])
    assert exit_info.value.code == 0
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_steps"] == 50
    assert cfg["model"]["towers"]["text"]["init_args"]["width"] == 32
    assert cfg["data"]["batch_size"] == 16
    # the recipe's ${data.image_size} interpolation follows the command-line value
    assert cfg["model"]["towers"]["image"]["init_args"]["image_size"] == cfg["data"]["image_size"] == 48


def test_recipe_given_as_a_yaml_path(tmp_path):
    from vlp.recipes import recipes_root

    path = tmp_path / "mine.yaml"
    path.write_text(f"extends: {recipes_root() / 'clip_tiny.yaml'}\ndata: {{batch_size: 4}}\n")
    cli = run_cli(["--recipe", str(path), *TINY, "--data.batch_size", "4", "--trainer.logger", "false"], run=False)
    assert cli.datamodule.batch_size == 4


def test_console_script_lists_recipes():
    out = subprocess.run([sys.executable, "-m", "vlp.cli", "recipes"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert "clip_tiny" in names and "clip_vit_b16" in names


def test_fit_clip_tiny_end_to_end_prints_eval_checkpoint_and_logs(tmp_path, capsys):
    main(["fit", "--recipe", "clip_tiny", *TINY, "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1",
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    out = capsys.readouterr().out
    assert "data: 24 samples read; skipped 0" in out  # 3 steps x batch 8
    ckpt = next(line for line in out.splitlines() if line.startswith("checkpoint: ")).split(": ", 1)[1]
    logs = next(line for line in out.splitlines() if line.startswith("logs: ")).split(": ", 1)[1]
    # the evaluation after the last step: printed, one line per task with its saved headline values
    saved = json.loads((Path(logs) / "eval.json").read_text())
    assert saved["step"] == 3
    assert [r["task"] for r in saved["results"]] == [  # the recipe's tasks, in its order
        "emoji_google_test_retrieval", "emoji_twitter_test_retrieval", "emoji_twitter_train_retrieval",
        "emoji_google_test_category", "emoji_twitter_test_category"]
    lines = out.splitlines()
    start = lines.index("evaluation after step 3:")
    assert lines[start + 1:start + 6] == [f"  {r['task']:<40} {task_summary(r)}" for r in saved["results"]]
    assert ckpt.startswith(str(tmp_path)) and torch.load(ckpt, weights_only=False)["global_step"] == 3
    assert (tmp_path / "clip_tiny").exists() and logs.startswith(str(tmp_path))
    metrics = (next((tmp_path / "clip_tiny").glob("version_*")) / "metrics.csv").read_text()
    assert "train/contrastive_loss" in metrics and "eval/emoji_google_test_retrieval/image_to_text_R@1" in metrics


def test_clip_vit_b16_runs_a_step_on_cpu(tmp_path):
    cli = run_cli(["fit", "--recipe", "clip_vit_b16", "--trainer.max_steps", "1", "--trainer.devices", "1",
              "--trainer.strategy", "auto", "--trainer.accelerator", "cpu", "--data.batch_size", "2",
              "--data.num_workers", "0", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
              "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.global_step == 1
    assert cli.model.towers.image.trunk.patch_embed.proj.kernel_size == (16, 16)
    assert len(cli.model.towers.text.blocks) == 12 and cli.trainer.precision == "bf16-mixed"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@pytest.mark.slow
def test_fit_on_two_cpu_processes(tmp_path):
    """DDP with gloo through the real CLI: both ranks take the same number of steps."""
    cmd = [sys.executable, "-m", "vlp.cli", "fit", "--recipe", "clip_tiny", *TINY, "--trainer.max_steps", "3",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    ckpt = next(line for line in out.stdout.splitlines() if line.startswith("checkpoint: ")).split(": ", 1)[1]
    assert torch.load(ckpt, weights_only=False)["global_step"] == 3
    # the end-of-run evaluation was sharded over the two ranks; it equals one process's
    logs = next(line for line in out.stdout.splitlines() if line.startswith("logs: ")).split(": ", 1)[1]
    sharded = {r["task"]: r for r in json.loads((Path(logs) / "eval.json").read_text())["results"]}
    main(["eval", "--ckpt", ckpt, "--out", str(tmp_path / "single"), *[a for t in sharded for a in ("--task", t)]])
    files = sorted((tmp_path / "single").glob("*.json"))
    assert len(files) == len(sharded) == 5
    for f in files:
        single = json.loads(f.read_text())
        assert single["num_samples"] == sharded[single["task"]]["num_samples"]
        assert single["metrics"] == pytest.approx(sharded[single["task"]]["metrics"], abs=1e-6), single["task"]


@pytest.mark.parametrize("argv, expected", [
    (["--ckpt_path", "nowhere.ckpt"], "--ckpt_path nowhere.ckpt: no such checkpoint file"),
    (["--data.max_bad_fraction", "2"], "data.max_bad_fraction must be in [0, 1], got 2"),
    (["--model.optim.max_nonfinite_in_row", "-1"], "model.optim.max_nonfinite_in_row must be >= 0"),
    (["--data.seed", "abc"], "data.seed"),
    (["--trainer.max_stepz", "3"], "--trainer.max_stepz"),
    (["--trainer.callbacks", "[{class_path: lightning.pytorch.callbacks.ModelCheckpont}]"], "ModelCheckpont"),
    (["--model.towers.image.model_name", "vit_nonexistent_patch16"], "vit_nonexistent_patch16"),
    (["--model.objectives", "[{class_path: vlp.objectives.ContrastiveLoss}, {class_path: tests.test_cli.NeedsViews}]",
      "--model.share", "{views: image}"],
     "objective views reads batch fields ['views'], which this data pipeline does not make"),
    (["--model.objectives", "[{class_path: tests.test_cli.NeedsViews}]"],
     "objective views reads views.features, but there is no tower or shared name 'views'"),
    (["--data.fields", "{label: {class_path: vlp.data.fields.Label, init_args: {pathh: category}}}"],
     "vlp: error: data.fields: unknown key 'pathh'"),
])
def test_bad_overrides_end_in_one_line_before_training(capsys, argv, expected):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", *TINY, "--trainer.max_steps", "1",
                                "--trainer.logger", "false", *argv])
    assert line.startswith("vlp: error: ") and expected in line, line


def test_periodic_evaluation_history_with_training_seconds(tmp_path, capsys):
    callbacks = ("[{class_path: vlp.callbacks.EvalTasks, init_args: {tasks: [emoji_twitter_test_retrieval, "
                 "emoji_twitter_test_category], every_n_steps: 2, periodic_tasks: [emoji_twitter_test_category]}}]")
    main(["fit", "--recipe", "clip_tiny", *TINY, "--trainer.max_steps", "4", "--trainer.callbacks", callbacks,
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    logs = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("logs: ")).split(": ", 1)[1]
    saved = json.loads((Path(logs) / "eval.json").read_text())
    history = saved["history"]
    # step 2: the periodic subset; step 4: the periodic subset, completed by the end-of-run tasks
    assert [h["step"] for h in history] == [2, 4]
    assert list(history[0]["metrics"]) == ["emoji_twitter_test_category"]
    assert sorted(history[1]["metrics"]) == ["emoji_twitter_test_category", "emoji_twitter_test_retrieval"]
    assert [r["task"] for r in saved["results"]] == ["emoji_twitter_test_retrieval", "emoji_twitter_test_category"]
    assert saved["results"][1]["metrics"] == history[1]["metrics"]["emoji_twitter_test_category"]
    assert 0 < history[0]["train_seconds"] < history[1]["train_seconds"]
    with open(Path(logs) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/train_seconds")]
    assert sorted({float(r["eval/train_seconds"]) for r in rows}) == pytest.approx([h["train_seconds"] for h in history])

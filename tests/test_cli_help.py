"""vlp's own help (listed from vlp.commands), the command checks, recipe vars on the command
line, and the one-line errors for a missing recipe, removed Lightning subcommands, a missing
DeepSpeed and an ambiguous option into a list."""

import importlib.util

import pytest
import yaml

from tests.conftest import TINY
from tests.test_cli import _error_line
from vlp import commands
from vlp.cli import main, run_cli
from vlp.commands import fit
from vlp.fit_checks import check_strategy


@pytest.mark.parametrize("argv", [[], ["-h"], ["--help"]])
def test_vlp_help_lists_every_command_then_how_to_fit(argv, capsys):
    main(argv)
    out = capsys.readouterr().out
    listed = out.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listed] == commands.names()
    for line, (name, help_line) in zip(listed, commands.table()):
        assert line.split(None, 1)[1] == help_line, name
    assert out.endswith(fit.USAGE)  # the recipe, overrides, vars, an example, where every option is
    assert "validate" not in out


def test_fit_help_without_a_recipe_is_the_fit_usage(capsys):
    assert main(["fit", "--help"]) is None
    assert capsys.readouterr().out == fit.USAGE
    assert fit.USAGE.startswith("usage: vlp fit --recipe NAME|PATH") and "vlp fit --recipe NAME --help" in fit.USAGE


def test_fit_help_with_a_recipe_lists_its_vars_and_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--recipe", "clip_tiny", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe clip_tiny:") and "--vars.ckpt_every_n_steps (default 100)" in out.splitlines()[0]
    assert "--trainer.max_steps" in out and "--data.batch_size" in out and "--model.towers" in out
    assert "{fit,validate" not in out


@pytest.mark.parametrize("argv", [["fit"], ["fit", "--trainer.max_steps", "3"], ["fit", "--print_config"]])
def test_fit_without_a_recipe_asks_for_one(argv, capsys):
    line = _error_line(capsys, argv)
    assert line.startswith("vlp: error: vlp fit needs a recipe: give --recipe NAME (the names: `vlp recipes`)")


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_lightning_evaluation_subcommands_point_to_vlp_eval(command, capsys):
    line = _error_line(capsys, [command, "--recipe", "clip_tiny"])
    assert line.startswith(f"vlp: error: `vlp {command}` is not a vlp command") and "vlp eval --ckpt PATH" in line


def test_unknown_command_suggests_the_close_one(capsys):
    line = _error_line(capsys, ["fti", "--recipe", "clip_tiny"])
    listed = ", ".join(commands.names())
    assert line == f"vlp: error: unknown command 'fti'; did you mean fit? (the commands: {listed}; see `vlp --help`)"
    line = _error_line(capsys, ["evl", "--ckpt", "x.ckpt"])
    assert line.startswith("vlp: error: unknown command 'evl'; did you mean eval?")


def test_options_before_any_command_ask_for_one(capsys):
    line = _error_line(capsys, ["--recipe", "clip_tiny"])
    assert line == "vlp: error: give a subcommand before --recipe, e.g. `vlp fit --recipe clip_tiny`"


def test_deepspeed_recipe_without_deepspeed_says_how_to_install(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    line = _error_line(capsys, ["fit", "--recipe", "flip_vit_l"])
    assert line == ("vlp: error: trainer.strategy vlp_deepspeed_stage_2 needs DeepSpeed, which is not installed: "
                    "pip install -e '.[deepspeed]' (or choose another, e.g. --trainer.strategy ddp)")
    class_path = "{class_path: lightning.pytorch.strategies.DeepSpeedStrategy, init_args: {stage: 3}}"
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", "--trainer.strategy", class_path])
    assert "trainer.strategy lightning.pytorch.strategies.DeepSpeedStrategy needs DeepSpeed" in line


def test_strategy_check_leaves_other_strategies_alone(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    for strategy in ("auto", "ddp", "ddp_find_unused_parameters_true", None):
        check_strategy({"strategy": strategy})
    check_strategy(None)


def _callback(cli, name):
    return next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == name)


def test_vars_set_the_checkpoint_frequency_and_nothing_else(tmp_path):
    cli = run_cli(["--recipe", "clip_tiny", *TINY, "--trainer.logger", "false", "--vars.ckpt_every_n_steps", "10",
                   "--vars.ckpt_keep=3", "--trainer.default_root_dir", str(tmp_path)], run=False)
    ckpt = _callback(cli, "StepCheckpoint")
    assert ckpt._every_n_train_steps == 10 and ckpt.save_top_k == 3
    assert _callback(cli, "EvalTasks").every_n_steps is None


def test_vars_reach_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--recipe", "flip_tiny", "--vars.ckpt_every_n_steps", "7", "--print_config"])
    assert exit_info.value.code == 0
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    assert callbacks[0]["init_args"]["every_n_steps"] == 7
    assert "vars" not in yaml.safe_dump(callbacks)


@pytest.mark.parametrize("argv, expected", [
    (["--vars.ckpt_every_n_steps", "ten"],
     "--vars.ckpt_every_n_steps 'ten': expected an integer (the recipe's default is 100)"),
    (["--vars.ckpt_evry_n_steps", "10"],
     "--vars.ckpt_evry_n_steps: recipe clip_tiny has no var 'ckpt_evry_n_steps'; did you mean ckpt_every_n_steps? "
     "(its vars: ckpt_every_n_steps, ckpt_keep)"),
    (["--vars.ckpt_keep"], "--vars.ckpt_keep needs a value"),
    (["--vars", "{ckpt_keep: 3}"], "give the recipe's vars one at a time: --vars.NAME VALUE"),
])
def test_bad_vars_end_in_one_line(argv, expected, capsys):
    assert _error_line(capsys, ["fit", "--recipe", "clip_tiny", *argv]) == f"vlp: error: {expected}"


def test_vars_without_a_recipe_are_an_error(capsys):
    line = _error_line(capsys, ["fit", "--config", "x.yaml", "--vars.ckpt_keep", "3"])
    assert line == "vlp: error: --vars.ckpt_keep: vars belong to a recipe; give --recipe NAME"


@pytest.mark.parametrize("option", ["--trainer.callbacks.init_args.every_n_steps", "--trainer.callbacks.every_n_steps",
                                    "--trainer.callbacks.class_path"])
def test_an_option_into_a_list_of_several_callbacks_is_ambiguous(option, capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", option, "10"])
    assert line.startswith(f"vlp: error: {option} is ambiguous: trainer.callbacks holds 2 entries "
                           "(StepCheckpoint, EvalTasks)")
    assert "--vars.NAME VALUE; its vars: ckpt_every_n_steps, ckpt_keep" in line
    assert "--trainer.callbacks '[...]'" in line
    # any list: here one given whole on the command line before the option
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", "--model.objectives", "[{class_path: "
                                "vlp.objectives.ContrastiveLoss}, {class_path: vlp.objectives.SigmoidLoss}]",
                                "--model.objectives.init_args.label_smoothing", "0.1"])
    assert "--model.objectives.init_args.label_smoothing is ambiguous: model.objectives holds 2 entries" in line


def test_help_for_one_callback_class_is_not_ambiguous(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--recipe", "clip_tiny", "--trainer.callbacks.help", "vlp.callbacks.StepCheckpoint"])
    assert exit_info.value.code == 0 and "--trainer.callbacks.every_n_steps" in capsys.readouterr().out


def test_a_whole_list_given_first_makes_the_entry_option_plain(tmp_path):
    cli = run_cli(["--recipe", "clip_tiny", *TINY, "--trainer.logger", "false",
                   "--trainer.callbacks", "[{class_path: vlp.callbacks.StepCheckpoint}]",
                   "--trainer.callbacks.init_args.every_n_steps", "7", "--trainer.default_root_dir", str(tmp_path)],
                  run=False)
    assert _callback(cli, "StepCheckpoint")._every_n_train_steps == 7


def test_one_shard_trains_with_the_recipes_two_workers_lowered_to_one(tmp_path):
    with pytest.warns(UserWarning, match="data.num_workers 2 lowered to 1"):
        cli = run_cli(["fit", "--recipe", "clip_tiny", *TINY, "--data.num_workers", "2",
                       "--data.train_shards", "builtin:emoji/google/train-000000.tar", "--trainer.max_steps", "2",
                       "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing",
                       "false", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.global_step == 2 and cli.trainer.train_dataloader.num_workers == 1

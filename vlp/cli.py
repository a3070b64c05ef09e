"""The `vlp` command: LightningCLI with recipes.

    vlp recipes                                   list the recipes
    vlp fit --recipe clip_tiny [--trainer.max_steps 50 --data.batch_size 16 ...]
    vlp fit --recipe path/to/recipe.yaml --print_config
    vlp eval --ckpt PATH --task NAME [--task NAME ...]   (see vlp.eval.command)
    vlp caption --ckpt PATH IMAGE_OR_SHARDS...          (see vlp.caption)
    vlp convert SHARDED_DIR OUT.ckpt                    (see vlp.convert)
    vlp overlap --train SHARDS --eval TASK_OR_SHARDS    (see vlp.overlap)

``--recipe`` loads and merges the recipe (vlp.recipes) and hands it to LightningCLI
as its first ``--config``; every later option overrides a recipe value; ``--vars.NAME
VALUE`` sets one of the recipe's vars (consumed here, before LightningCLI).
User errors print one line ``vlp: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path

import yaml

from vlp.errors import VLPError

COMMANDS = ("fit", "eval", "caption", "convert", "overlap", "recipes")

FIT_USAGE = """\
usage: vlp fit --recipe NAME|PATH [--KEY VALUE ...] [--vars.NAME VALUE ...]

  --recipe NAME|PATH   a shipped recipe (`vlp recipes` lists them) or your own YAML file
  --KEY VALUE          override any value of the recipe: --trainer.max_steps 50, --data.batch_size 16,
                       --model.towers.text.width 32, --data.train_shards '/data/{00000..00099}.tar'
  --vars.NAME VALUE    set one of the recipe's vars, the way to reach one entry of a list
                       (e.g. --vars.ckpt_every_n_steps 10 for the StepCheckpoint callback)
  --print_config       print the merged config and exit without training
  --ckpt_path last     resume from the newest checkpoint of the run (or a checkpoint file / sharded directory)

example:
  vlp fit --recipe clip_tiny --trainer.max_steps 50 --vars.ckpt_every_n_steps 10

every option of a recipe (Lightning's full list, the recipe's values as defaults, its vars first):
  vlp fit --recipe NAME --help
"""

USAGE = f"""\
usage: vlp COMMAND [options]

Contrastive vision-language pretraining (CLIP and its family) from YAML recipes.

commands:
  fit       train a recipe (below)
  eval      evaluate checkpoints on eval tasks: vlp eval --ckpt PATH --task NAME (more: vlp eval --help)
  caption   caption images with a CoCa checkpoint: vlp caption --ckpt PATH IMAGE_OR_SHARDS... (more: vlp caption --help)
  convert   one checkpoint file out of a DeepSpeed / FSDP2 checkpoint directory: vlp convert DIR OUT.ckpt
  overlap   near-duplicates of eval images in training data: vlp overlap --train SHARDS --eval TASK (more: --help)
  recipes   list the shipped recipes

{FIT_USAGE}"""


def _union_reason(lines: list[str]) -> str | None:
    """The first non-None member's reason of jsonargparse's 'Does not validate against any of
    the Union subtypes' message (each reason is a line starting with '- ')."""
    if not any("Does not validate against any of the Union subtypes" in ln for ln in lines):
        return None
    reasons = [ln.strip()[2:] for ln in lines if ln.strip().startswith("- ") and "NoneType" not in ln]
    return reasons[0] if reasons else None


def _one_line(message: str, argv: list[str] = ()) -> str:
    """jsonargparse's messages nest the reasons of every union member; keep the gist,
    and name the command-line option where jsonargparse names only the last part."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return "invalid arguments"
    head = lines[0].rstrip(":")
    reason = _union_reason(lines)
    if reason:
        return f"{head}: {reason}"
    unknown = re.match(r"Option '([^']+)' is not accepted", head)
    if unknown:
        given = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0].endswith("." + unknown.group(1))]
        return f"unknown option {given[0] if given else unknown.group(1)}: no such key"
    if len(lines) > 1 and head.startswith("Parser key"):
        return f"{head}: {lines[1]}"
    if head.startswith("the following arguments are required"):
        return f"{head}: the recipe or config must set them (the shipped recipes: `vlp recipes`)"
    return head


def _make_cli_class(argv: list[str], recipe: str | None = None):
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from vlp.data.datamodule import VLPDataModule
    from vlp.module import VLPModule

    class VLPArgumentParser(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            raise VLPError(_one_line(message, argv))

    class VLPCLI(LightningCLI):
        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            # validate / test / predict need loops the module does not have; `vlp eval` evaluates
            return {"fit": LightningCLI.subcommands()["fit"]}

        def init_parser(self, **kwargs) -> LightningArgumentParser:
            kwargs.setdefault("dump_header", ["vlp recipe (merged); run it with vlp fit --recipe FILE"])
            return super().init_parser(**kwargs)

        def before_fit(self) -> None:
            check_batch_fields(self.model, self.datamodule)
            self.model.recipe = recipe_id(recipe)
            install_atomic_checkpoints(self.trainer)
            take_clipping = getattr(self.model.step, "take_trainer_clipping", None)
            if callable(take_clipping):  # a step that clips itself (Lightning clips automatic steps only)
                take_clipping(self.trainer)
            config = self.config_init[self.subcommand]
            if config.get("ckpt_path") == "last":
                config["ckpt_path"] = find_last_checkpoint(self.trainer, self.model)
            ckpt = config.get("ckpt_path")
            if ckpt not in (None, "best", "hpc", "registry") and "://" not in str(ckpt):
                from vlp.checkpointing import check_resume

                check_resume(ckpt, self.trainer.strategy, self.trainer.world_size)

        def before_instantiate_classes(self) -> None:
            check_strategy((self.config.get(self.subcommand) if self.subcommand else self.config).get("trainer"))
            ckpt = self.config.get(self.subcommand, {}).get("ckpt_path") if self.subcommand else None
            if ckpt not in (None, "last", "best", "hpc", "registry") and "://" not in str(ckpt) \
                    and not Path(ckpt).is_file():
                from vlp.checkpointing import sharded_kind

                if Path(ckpt).is_dir() and sharded_kind(ckpt) is None:
                    raise VLPError(f"--ckpt_path {ckpt}: a directory, but neither a DeepSpeed nor an FSDP2 checkpoint")
                if not Path(ckpt).is_dir():
                    raise VLPError(f"--ckpt_path {ckpt}: no such checkpoint file (give a path, or `last` to resume "
                                   "from the newest checkpoint of this run)")

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except ValueError as e:
                # a part's own check (VLPError) failed while jsonargparse built it: keep its message
                lines = str(e).splitlines()
                if not any("Does not validate against any of the Union subtypes" in ln for ln in lines):
                    raise
                raise VLPError(_union_reason(lines) or _one_line(str(e))) from None
            # the parts that read token ids take the tokenizer's spec as soon as both are built,
            # for a fit and for a build without one (run_cli(run=False): benchmarks, tests)
            check_tokenizer(self.model, self.datamodule)

        def instantiate_trainer(self, **kwargs):
            listed = self._get(self.config_init, "trainer", default={}).get("callbacks")
            return super().instantiate_trainer(**kwargs, **progress_defaults(listed))

        def after_fit(self) -> None:
            trainer = self.trainer
            log_dir = trainer.log_dir  # a collective under DDP: every rank asks
            data = self.datamodule.summary() if hasattr(self.datamodule, "summary") else None  # collective too
            from vlp.callbacks.checkpoint import interrupted_by

            stopped = interrupted_by(trainer)
            if trainer.global_rank == 0:
                self._report(trainer, data, log_dir, stopped)
            if stopped:  # every rank leaves with the signal's status
                sys.exit(128 + int(getattr(signal.Signals, stopped)))

        def _report(self, trainer, data, log_dir, stopped) -> None:
            if data:
                print(f"data: {data}")
            if getattr(self.model, "nonfinite_skipped", 0):
                print(f"non-finite steps skipped: {self.model.nonfinite_skipped}")
            ckpt = trainer.checkpoint_callback
            path = ckpt and (ckpt.last_model_path or ckpt.best_model_path)
            print(f"checkpoint: {path or 'none (no ModelCheckpoint callback)'}")
            print(f"logs: {log_dir}")
            if stopped:
                print(f"stopped by {stopped} after step {trainer.global_step}; continue with the same command and "
                      "--ckpt_path last", flush=True)

    return VLPCLI, VLPArgumentParser, VLPModule, VLPDataModule


def progress_defaults(listed) -> dict:
    """Trainer arguments for progress: a ProgressLog (vlp.callbacks) unless the recipe lists one,
    and, when it prints because stdout is not a terminal, no default progress bar (a bar shows
    nothing there until the end; TQDM's would fill stderr). A bar the recipe lists stays."""
    from lightning.pytorch.callbacks import ProgressBar

    from vlp.callbacks import ProgressLog

    listed = [] if listed is None else list(listed) if isinstance(listed, list) else [listed]
    log = next((c for c in listed if isinstance(c, ProgressLog)), None)
    out = {}
    if log is None:
        log = ProgressLog()
        out["callbacks"] = [*listed, log]
    if log.enabled() and not sys.stdout.isatty() and not any(isinstance(c, ProgressBar) for c in listed):
        out["enable_progress_bar"] = False
    return out


def check_strategy(trainer_config) -> None:
    """A DeepSpeed strategy needs the deepspeed package: say so (and how to get it) before
    anything is built, rather than in Lightning's traceback."""
    import importlib.util

    strategy = trainer_config.get("strategy") if trainer_config is not None else None
    name = strategy if isinstance(strategy, str) else getattr(strategy, "class_path", None)
    if isinstance(strategy, dict):
        name = strategy.get("class_path")
    if not isinstance(name, str):
        return
    if (name.startswith(("deepspeed", "vlp_deepspeed")) or name.rsplit(".", 1)[-1] == "DeepSpeedStrategy") \
            and importlib.util.find_spec("deepspeed") is None:
        raise VLPError(f"trainer.strategy {name} needs DeepSpeed, which is not installed: "
                       "pip install -e '.[deepspeed]' (or choose another, e.g. --trainer.strategy ddp)")


def install_atomic_checkpoints(trainer) -> None:
    """Checkpoints are written to a temporary file and renamed (vlp.checkpointing), unless the
    recipe chose its own CheckpointIO."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from vlp.checkpointing import AtomicCheckpointIO

    strategy = trainer.strategy
    if type(getattr(strategy, "_checkpoint_io", None)) in (TorchCheckpointIO, type(None)):
        strategy.checkpoint_io = AtomicCheckpointIO()


def recipe_id(recipe: str | None) -> str | None:
    """How checkpoints name the run's recipe: a shipped recipe by its name, a file by its
    absolute path (two files with the same stem are different recipes)."""
    if recipe is None:
        return None
    from vlp.recipes import find_recipe, recipes_root

    path = find_recipe(recipe).resolve()
    return path.stem if path.parent == recipes_root().resolve() else str(path)


def find_last_checkpoint(trainer, model) -> str | None:
    """``--ckpt_path last``: the newest checkpoint of this run's recipe in this run's folders
    (every version under the logger's root, the checkpoint callbacks' folders); see
    vlp.checkpointing.resume_checkpoint. None (start from scratch, as Lightning does) when there
    is none, so the flag can be set from the first run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vlp.checkpointing import resume_checkpoint

    roots = [Path(cb.dirpath) for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    for logger in trainer.loggers:
        if getattr(logger, "root_dir", None):
            roots.append(Path(logger.root_dir))
    if not trainer.loggers:
        roots.append(Path(trainer.default_root_dir))
    best, note = resume_checkpoint(roots, model.recipe, model)
    if trainer.global_rank == 0:
        print(note)
    return None if best is None else str(best)


def check_batch_fields(model, datamodule) -> None:
    """The batch fields the model's objectives read (its towers' inputs and their own fields)
    must be among those the data pipeline makes: checked before training, not at the first batch."""
    provides = getattr(datamodule, "batch_fields", None)
    needs = getattr(model, "batch_fields", None)
    if provides is None or needs is None:
        return
    fields = provides()
    missing = needs() - fields
    if missing:
        readers = [o.name for o in model.objectives
                   if missing & ({model.inputs[r.split(".")[0]] for r in o.reads} | set(o.fields))]
        raise VLPError(f"objective {', '.join(readers)} reads batch fields {sorted(missing)}, which this data "
                       f"pipeline does not make (it makes {sorted(fields)})")


def check_tokenizer(model, datamodule) -> None:
    """Hand the tokenizer's TextSpec to every part of the model that reads token ids (those with
    ``bind_text_spec``, vlp.data.text_spec): each adopts its pad id, and one whose sizes or
    explicit pad id do not fit the tokenizer is refused here, before training."""
    from vlp.data.text_spec import bind_parts

    tokenizer = getattr(datamodule, "tokenizer", None)
    spec = getattr(tokenizer, "spec", None)
    if spec is None:
        takers = [name for name, part in model.named_modules() if hasattr(part, "bind_text_spec")]
        if takers and getattr(datamodule, "text_renderer", None) is not None:
            raise VLPError(f"model.{takers[0]} reads token ids, but data.text_renderer draws the captions as images "
                           "(CLIPPO: encode them with the image tower, model.share: {text: image})")
        if takers:
            raise VLPError(f"model.{takers[0]} reads token ids but data.tokenizer ({type(tokenizer).__name__}) has no "
                           "spec to give it (a tokenizer owns a vlp.data.text_spec.TextSpec as .spec)")
        return
    bind_parts(model, spec)


def _take_recipe(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, recipe = [], None
    it = iter(argv)
    for arg in it:
        if arg == "--recipe":
            recipe = next(it, None)
            if recipe is None:
                raise VLPError("--recipe needs a name or a YAML path (see `vlp recipes`)")
        elif arg.startswith("--recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return recipe, rest


def _dotted_overrides(args: list[str]) -> dict:
    """``--a.b value`` / ``--a.b=value`` pairs of the command line, values parsed as YAML."""
    out = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            continue
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, raw = arg[2:], args[i + 1]
        else:
            continue
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
    return out


def _front_door(argv: list[str]) -> bool:
    """vlp's own help and the command checks; True when it answered (help printed)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return True
    command = argv[0]
    if command in ("validate", "test", "predict"):
        raise VLPError(f"`vlp {command}` is not a vlp command: evaluate a checkpoint with `vlp eval --ckpt PATH "
                       "--task NAME` (the tasks: `vlp eval --list`)")
    if command.startswith("-"):
        return False  # `vlp --recipe X` without a command: answered below
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise VLPError(f"unknown command '{command}'{hint} (the commands: {', '.join(COMMANDS)}; see `vlp --help`)")
    rest = argv[1:]
    if command == "fit" and not any(a.split("=", 1)[0] in ("--recipe", "--config", "-c") for a in rest):
        if "-h" in rest or "--help" in rest:
            print(FIT_USAGE, end="")
            return True
        raise VLPError("vlp fit needs a recipe: give --recipe NAME (the names: `vlp recipes`) "
                       "or --recipe path/to/recipe.yaml")
    return False


def _take_vars(args: list[str], recipe: str | None) -> tuple[dict[str, str], list[str]]:
    """``--vars.NAME VALUE`` / ``--vars.NAME=VALUE`` out of the command line (raw strings)."""
    given, rest = {}, []
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg.split("=", 1)[0]
        i += 1
        if key != "--vars" and not key.startswith("--vars."):
            rest.append(arg)
            continue
        name = key[len("--vars."):]
        if not name:
            raise VLPError("give the recipe's vars one at a time: --vars.NAME VALUE")
        if "=" in arg:
            value = arg.split("=", 1)[1]
        elif i < len(args) and not args[i].startswith("--"):
            value, i = args[i], i + 1
        else:
            raise VLPError(f"{key} needs a value")
        given[name] = value
    if given and recipe is None:
        raise VLPError(f"--vars.{next(iter(given))}: vars belong to a recipe; give --recipe NAME")
    return given, rest


def _list_on_path(config: dict, key: str) -> tuple[str, list] | None:
    """The list that the dotted ``key`` goes into before its last part (``init_args`` may be
    left out, as on the command line), with its dotted path; None if it goes into none."""
    parts, node = key.split("."), config
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
        if isinstance(node, list):
            return ".".join(parts[: i + 1]), node
    return None


def check_list_overrides(config: dict, args: list[str], var_names: list[str]) -> None:
    """A dotted option that goes into a list of several entries (``--trainer.callbacks.init_args.X``
    with two callbacks) would change only the last entry (jsonargparse's rule): refuse it."""
    seen: dict[str, object] = {}  # the options given so far: a whole list replaces the recipe's
    for j, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, sep, value = arg[2:].partition("=")
        if not sep and j + 1 < len(args) and not args[j + 1].startswith("--"):
            value = args[j + 1]
        # `--trainer.callbacks.help CLASS` is jsonargparse's help for a class, not a value
        found = None if key.endswith(".help") else _list_on_path(config, key)
        if found is not None and f"{found[0]}+" not in seen:  # `+` appends: meant for the last entry
            path, entries = found
            if isinstance(seen.get(path), list):
                entries = seen[path]
            if len(entries) > 1:
                names = [str(e.get("class_path", "?")).rsplit(".", 1)[-1] if isinstance(e, dict) else repr(e)
                         for e in entries]
                via = (f"the recipe's vars (--vars.NAME VALUE; its vars: {', '.join(var_names)})"
                       if var_names else "a recipe of your own with vars (see vlp/recipes.py)")
                raise VLPError(f"--{key} is ambiguous: {path} holds {len(entries)} entries ({', '.join(names)}) "
                               f"and it would change only the last; use {via}, or give the whole list "
                               f"--{path} '[...]' (see --print_config)")
        try:
            seen[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            seen[key] = value


def recipe_config(recipe: str, args: list[str], var_values: dict[str, str]) -> dict:
    """The merged recipe with the command line's values that interpolations need; list-entry
    options are checked. With ``--help``, the recipe's vars are printed before Lightning's help."""
    from vlp.recipes import load_recipe, recipe_vars

    config = load_recipe(recipe, _dotted_overrides(args), var_values)
    defaults = recipe_vars(recipe)
    check_list_overrides(config, args, list(defaults))
    if "-h" in args or "--help" in args:
        listed = ", ".join(f"--vars.{k} (default {v})" for k, v in defaults.items()) or "none"
        print(f"recipe {recipe}: the options below override its values (shown as defaults); its vars: {listed}\n")
    return config


def run_cli(argv: list[str], run: bool = True):
    """Parse ``argv`` (without the program name) and run it; returns the LightningCLI.

    ``run=False`` builds the model, data and trainer without a subcommand (tests).
    """
    from vlp.recipes import list_recipes

    if run and _front_door(argv):
        return None
    if argv[:1] == ["eval"]:
        from vlp.eval.command import eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["caption"]:
        from vlp.caption import caption_main

        return caption_main(argv[1:])
    if argv[:1] == ["convert"]:
        from vlp.convert import convert_main

        return convert_main(argv[1:])
    if argv[:1] == ["overlap"]:
        from vlp.overlap import overlap_main

        return overlap_main(argv[1:])
    if argv[:1] == ["recipes"]:
        rows = list_recipes()
        width = max(len(n) for n, _ in rows)
        for name, description in rows:
            print(f"{name:<{width}}  {description}")
        return None
    recipe, rest = _take_recipe(argv)
    var_values, rest = _take_vars(rest, recipe)
    if recipe is not None:
        if run and (not rest or rest[0].startswith("-")):
            raise VLPError("give a subcommand before --recipe, e.g. `vlp fit --recipe clip_tiny`")
        config = recipe_config(recipe, rest, var_values)
        at = 1 if run else 0  # the merged recipe goes in as YAML text (no temporary file to leave behind)
        rest = [*rest[:at], "--config", yaml.safe_dump(config, sort_keys=False), *rest[at:]]
    VLPCLI, VLPArgumentParser, VLPModule, VLPDataModule = _make_cli_class(rest, recipe)
    return VLPCLI(
        VLPModule,
        VLPDataModule,
        args=rest,
        parser_class=VLPArgumentParser,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        run=run,
    )


class _DropAdvert(logging.Filter):
    """Lightning advertises cloud services at every start; vlp runs offline."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in record.getMessage()


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # nohup / SLURM logs: each line as it is printed
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Known and handled: the stream gives every worker its own shards and a fixed length.
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    # vlp.step.PlainStep returns None on purpose to skip a non-finite step (counted and logged)
    warnings.filterwarnings("ignore", message="`training_step` returned `None`")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvert())
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.stream = sys.stderr  # the stderr of this call, not of the first import
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        run_cli(argv)
    except VLPError as e:
        print(f"vlp: error: {e}", file=sys.stderr)
        _leave_distributed(2)
        sys.exit(2)
    except SystemExit as e:  # e.g. a run stopped by a signal
        _leave_distributed(e.code if isinstance(e.code, int) else 1)
        raise
    _leave_distributed(0)


def _leave_distributed(code: int) -> None:
    """After a distributed run (a process group exists): destroy the process group and leave
    with ``code`` without the interpreter's teardown, where gloo's threads now and then abort a
    finished run ("terminate called without an active exception", exit status -6 instead of 0).
    Everything of the run is written by then (checkpoints, logs, the printed summary, flushed
    here). In a one-process run this returns and the caller goes on as usual."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - leaving anyway; the run's own outcome is what counts
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

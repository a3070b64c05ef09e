"""The `vlp` command: LightningCLI with recipes.

    vlp recipes                                   list the recipes
    vlp fit --recipe clip_tiny [--trainer.max_steps 50 --data.batch_size 16 ...]
    vlp fit --recipe path/to/recipe.yaml --print_config
    vlp eval --ckpt PATH --task NAME [--task NAME ...]   (see vlp.eval.command)

``--recipe`` loads and merges the recipe (vlp.recipes) and hands it to LightningCLI
as its first ``--config``; every later option overrides a recipe value.
User errors print one line ``vlp: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import yaml

from vlp.errors import VLPError


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
    return head


def _make_cli_class(argv: list[str], recipe: str | None = None):
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from vlp.data.datamodule import VLPDataModule
    from vlp.module import VLPModule

    class VLPArgumentParser(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            raise VLPError(_one_line(message, argv))

    class VLPCLI(LightningCLI):
        def init_parser(self, **kwargs) -> LightningArgumentParser:
            kwargs.setdefault("dump_header", ["vlp recipe (merged); run it with vlp fit --recipe FILE"])
            return super().init_parser(**kwargs)

        def before_fit(self) -> None:
            check_tokenizer(self.model, self.datamodule)
            check_batch_fields(self.model, self.datamodule)
            self.model.recipe = recipe
            install_atomic_checkpoints(self.trainer)
            config = self.config_init[self.subcommand]
            if config.get("ckpt_path") == "last":
                config["ckpt_path"] = find_last_checkpoint(self.trainer)

        def before_instantiate_classes(self) -> None:
            ckpt = self.config.get(self.subcommand, {}).get("ckpt_path") if self.subcommand else None
            if ckpt not in (None, "last", "best", "hpc", "registry") and "://" not in str(ckpt) \
                    and not Path(ckpt).is_file():
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

        def after_fit(self) -> None:
            trainer = self.trainer
            log_dir = trainer.log_dir  # a collective under DDP: every rank asks
            data = self.datamodule.summary() if hasattr(self.datamodule, "summary") else None  # collective too
            if trainer.global_rank != 0:
                return
            if data:
                print(f"data: {data}")
            if getattr(self.model, "nonfinite_skipped", 0):
                print(f"non-finite steps skipped: {self.model.nonfinite_skipped}")
            ckpt = trainer.checkpoint_callback
            path = ckpt and (ckpt.last_model_path or ckpt.best_model_path)
            print(f"checkpoint: {path or 'none (no ModelCheckpoint callback)'}")
            print(f"logs: {log_dir}")

    return VLPCLI, VLPArgumentParser, VLPModule, VLPDataModule


def install_atomic_checkpoints(trainer) -> None:
    """Checkpoints are written to a temporary file and renamed (vlp.checkpointing), unless the
    recipe chose its own CheckpointIO."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from vlp.checkpointing import AtomicCheckpointIO

    strategy = trainer.strategy
    if type(getattr(strategy, "_checkpoint_io", None)) in (TorchCheckpointIO, type(None)):
        strategy.checkpoint_io = AtomicCheckpointIO()


def find_last_checkpoint(trainer) -> str | None:
    """``--ckpt_path last``: the checkpoint with the highest step in this run's folders (every
    version under the logger's root, the checkpoint callbacks' folders). None (start from
    scratch, as Lightning does) when there is none, so the flag can be set from the first run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vlp.checkpointing import newest_checkpoint

    roots = [Path(cb.dirpath) for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    for logger in trainer.loggers:
        if getattr(logger, "root_dir", None):
            roots.append(Path(logger.root_dir))
    if not trainer.loggers:
        roots.append(Path(trainer.default_root_dir))
    best = newest_checkpoint(*roots)
    if best is None:
        if trainer.global_rank == 0:
            print(f"--ckpt_path last: no checkpoint under {', '.join(map(str, roots))}; starting from scratch")
        return None
    if trainer.global_rank == 0:
        print(f"resuming from {best}")
    return str(best)


def check_batch_fields(model, datamodule) -> None:
    """Every objective's ``needs`` must be among the fields the data pipeline makes, checked
    before training rather than at the first batch."""
    provides = getattr(datamodule, "batch_fields", None)
    if provides is None:
        return
    fields = provides()
    for objective in getattr(model, "objectives", []):
        missing = set(getattr(objective, "needs", ())) - fields
        if missing:
            raise VLPError(f"objective {objective.name} needs batch fields {sorted(missing)}, which this data "
                           f"pipeline does not make (it makes {sorted(fields)})")


def check_tokenizer(model, datamodule) -> None:
    """The text tower must cover the tokenizer's ids and sequence length."""
    tower, tok = model.text_tower, datamodule.tokenizer
    vocab = getattr(tower, "vocab_size", None)
    if vocab is not None and tok.vocab_size > vocab:
        raise VLPError(f"the tokenizer has {tok.vocab_size} tokens but model.text_tower.vocab_size is {vocab}")
    ctx = getattr(tower, "context_length", None)
    if ctx is not None and tok.context_length > ctx:
        raise VLPError(
            f"data.context_length {tok.context_length} exceeds model.text_tower.context_length {ctx}"
        )


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


def run_cli(argv: list[str], run: bool = True):
    """Parse ``argv`` (without the program name) and run it; returns the LightningCLI.

    ``run=False`` builds the model, data and trainer without a subcommand (tests).
    """
    from vlp.recipes import list_recipes, load_recipe

    if argv[:1] == ["eval"]:
        from vlp.eval.command import eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["recipes"]:
        rows = list_recipes()
        width = max(len(n) for n, _ in rows)
        for name, description in rows:
            print(f"{name:<{width}}  {description}")
        return None
    recipe, rest = _take_recipe(argv)
    if recipe is not None:
        if run and (not rest or rest[0].startswith("-")):
            raise VLPError("give a subcommand before --recipe, e.g. `vlp fit --recipe clip_tiny`")
        merged = tempfile.NamedTemporaryFile("w", prefix=f"vlp-recipe-{Path(recipe).stem}-", suffix=".yaml",
                                             delete=False)
        with merged:
            yaml.safe_dump(load_recipe(recipe, _dotted_overrides(rest)), merged, sort_keys=False)
        atexit.register(os.unlink, merged.name)
        at = 1 if run else 0
        rest = [*rest[:at], "--config", merged.name, *rest[at:]]
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
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Known and handled: the stream gives every worker its own shards and a fixed length.
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
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
        sys.exit(2)


if __name__ == "__main__":
    main()

"""LightningCLI for `vlp fit`: the recipe merged in first, `fit` its only subcommand, vlp's checks
before building and before training (vlp.fit_checks), jsonargparse's errors as one line
(vlp.config_errors), progress printed where there is no terminal, the run's summary after.

``--recipe`` loads and merges the recipe (vlp.recipes) and hands it to LightningCLI as its first
``--config``; every later option overrides a recipe value; ``--vars.NAME VALUE`` sets one of the
recipe's vars (consumed here, before LightningCLI).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import vlp.strategies  # noqa: F401 - registers the vlp_deepspeed_* names that --trainer.strategy may give
from vlp.config_errors import UNION_MISMATCH, explain
from vlp.errors import VLPError
from vlp.fit_checks import (
    check_batch_fields,
    check_strategy,
    check_tokenizer,
    find_last_checkpoint,
    install_atomic_checkpoints,
)
from vlp.recipes import recipe_config, recipe_id, take_recipe, take_vars


def lightning_cli(args: list[str], run: bool = True) -> VLPCLI:
    """The VLPCLI of ``args``: ``fit [options]`` when ``run`` (trains), the options alone otherwise
    (builds the model, data and trainer without a subcommand: tests, benchmarks)."""
    from vlp.data.datamodule import VLPDataModule
    from vlp.module import VLPModule

    recipe, rest = take_recipe(args)
    var_values, rest = take_vars(rest, recipe)
    if recipe is not None:
        if run and (not rest or rest[0].startswith("-")):
            raise VLPError("give a subcommand before --recipe, e.g. `vlp fit --recipe clip_tiny`")
        config = recipe_config(recipe, rest, var_values)
        at = 1 if run else 0  # the merged recipe goes in as YAML text (no temporary file to leave behind)
        rest = [*rest[:at], "--config", yaml.safe_dump(config, sort_keys=False), *rest[at:]]
    return VLPCLI(
        VLPModule,
        VLPDataModule,
        recipe=recipe,
        args=rest,
        parser_class=parser_class(rest),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        run=run,
    )


def parser_class(argv: list[str]) -> type[LightningArgumentParser]:
    """The parser of one command line: its errors are one-line VLPErrors that name an unknown
    option as ``argv`` gave it. A class per command line, as jsonargparse makes the parsers of
    nested parts from the class, not from an instance."""

    class VLPArgumentParser(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            raise VLPError(explain(message, argv))

    return VLPArgumentParser


class VLPCLI(LightningCLI):
    """LightningCLI with `fit` only (`vlp eval` evaluates); ``recipe`` names the run's recipe in
    its checkpoints and finds the run for ``--ckpt_path last``."""

    def __init__(self, *args, recipe: str | None = None, **kwargs):
        self.recipe = recipe  # before LightningCLI's __init__, which parses, builds and runs
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # validate / test / predict need loops the module does not have; `vlp eval` evaluates
        return {"fit": LightningCLI.subcommands()["fit"]}

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", ["vlp recipe (merged); run it with vlp fit --recipe FILE"])
        return super().init_parser(**kwargs)

    def before_fit(self) -> None:
        check_batch_fields(self.model, self.datamodule)
        self.model.recipe = recipe_id(self.recipe)
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
            if UNION_MISMATCH not in str(e):
                raise
            raise VLPError(explain(str(e))) from None
        # the parts that read token ids take the tokenizer's spec as soon as both are built,
        # for a fit and for a build without one (run_cli(run=False): benchmarks, tests)
        check_tokenizer(self.model, self.datamodule)
        # what rebuilds the model: the model and data config, kept in checkpoints (vlp.inference)
        self.model.config = run_config(self.config.get(self.subcommand) if self.subcommand else self.config)

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


def run_config(config) -> dict:
    """``{"model": ..., "data": ...}`` of a parsed config (jsonargparse's Namespace), as plain
    JSON values (class_path / init_args mappings, lists): what checkpoints keep."""
    import json

    return {key: json.loads(json.dumps(config[key].as_dict() if hasattr(config[key], "as_dict") else config[key],
                                       default=str))
            for key in ("model", "data")}


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

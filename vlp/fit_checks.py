"""What `vlp fit` checks and sets up around building the parts and before training (called by
vlp.fit_cli.VLPCLI): a missing DeepSpeed said before anything is built, atomic checkpoint files,
``--ckpt_path last`` found, the batch fields the objectives read, the tokenizer's text spec handed
to the parts that read token ids."""

from __future__ import annotations

from pathlib import Path

from vlp.errors import VLPError


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

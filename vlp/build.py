"""Building one part from a ``class_path`` / ``init_args`` mapping outside LightningCLI (eval
tasks, a checkpoint's tokenizer), by jsonargparse as the CLI builds every other part: the
same type checks, and an unknown key or a wrong type is a one-line ``VLPError`` (worded by
vlp.config_errors, as the CLI's own errors are)."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

from vlp.config_errors import explain
from vlp.errors import VLPError


def build(spec: Any, base: Any, where: str) -> Any:
    """``spec`` (``{"class_path": ..., "init_args": {...}}``) built as a ``base`` (a class or a
    type such as ``A | B | None``); errors name ``where`` (a file, a checkpoint)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--part", type=base)
    try:
        config = parser.parse_object({"part": spec})
    except Exception as e:  # noqa: BLE001 - jsonargparse's ArgumentError and its type errors alike
        raise VLPError(f"{where}: {explain(str(e), hide='part')}") from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    try:
        return instantiate(config).part
    except VLPError as e:  # the part's own check of its arguments
        raise VLPError(f"{where}: {spec['class_path']}: {e}") from None

"""Building one part from a ``class_path`` / ``init_args`` mapping outside LightningCLI (eval
tasks, a checkpoint's tokenizer), by jsonargparse as the CLI builds every other part: the
same type checks, and an unknown key or a wrong type is a one-line ``VLPError``."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from jsonargparse import ArgumentParser

from vlp.errors import VLPError


def _plain(text: str) -> str:
    """``<class 'int'>`` -> ``int``."""
    return re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", text)


def _keys(class_path: str) -> list[str]:
    """The init arguments of the class at ``class_path`` ([] if it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def explain(message: str) -> str:
    """jsonargparse's nested message about one part -> one line naming the key at fault."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith('Parser key "part"')]
    where, reason = [], ""
    for ln in lines:
        match = re.match(r'Parser key "([^"]+)":?$', ln)
        cls = re.match(r"Problem with given class_path '([^']+)':?$", ln)
        if match:
            where.append(match.group(1))
        elif cls:
            where.append(cls.group(1))
        else:
            reason = ln
            break
    if reason.startswith("Does not validate against any of the Union subtypes"):
        # a class_path given for one member of a union (``A | B | None``): that member's reason
        start = next((i for i, ln in enumerate(lines) if ln.startswith("- Problem with given class_path")), None)
        if start is not None:
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("- ", "Given value"))),
                       len(lines))
            return ": ".join([*where, explain("\n".join([lines[start][2:], *lines[start + 1 : end]]))])
        subtypes = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Subtypes:")), "")
        given = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Given value:")), "?")
        reason = f"expected one of {_plain(subtypes)}, got {given}"
    unknown = re.match(r"Option '([^']+)' is not accepted", reason)
    if unknown:
        takes = _keys(where[-1]) if where else []
        reason = f"unknown key '{unknown.group(1)}'" + (f" (it takes {', '.join(takes)})" if takes else "")
    required = re.match(r"the following arguments are required: (.*)", reason)
    if required:
        reason = f"missing key(s) {required.group(1)}"
    reason = _plain(reason).replace("Expected a ", "expected ").replace(". Got value: ", ", got ")
    return ": ".join([*where, reason]) if reason else ": ".join(where) or "invalid"


def build(spec: Any, base: Any, where: str) -> Any:
    """``spec`` (``{"class_path": ..., "init_args": {...}}``) built as a ``base`` (a class or a
    type such as ``A | B | None``); errors name ``where`` (a file, a checkpoint)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--part", type=base)
    try:
        config = parser.parse_object({"part": spec})
    except Exception as e:  # noqa: BLE001 - jsonargparse's ArgumentError and its type errors alike
        raise VLPError(f"{where}: {explain(str(e))}") from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    try:
        return instantiate(config).part
    except VLPError as e:  # the part's own check of its arguments
        raise VLPError(f"{where}: {spec['class_path']}: {e}") from None

"""Eval tasks as data: a YAML file builds one task class, as a recipe builds any vlp part.

    # my_task.yaml
    class_path: vlp.eval.ZeroShotClassification   # or Retrieval, LinearProbe, FewShot, your own
    init_args:
      shards: /data/my-val-{000000..000009}.tar
      label_field: label
      templates: prompts.txt                      # a relative file: next to this task file first

Built-in tasks live in ``vlp/data/tasks``; ``load_task`` takes their name or a YAML path
and returns the built task (its ``name`` defaults to the file's name). An unknown key or a
wrong type is a one-line error naming the file and the key.
"""

from __future__ import annotations

import difflib
import math
from importlib import resources
from pathlib import Path

import yaml

from vlp.build import build
from vlp.errors import VLPError
from vlp.eval.base import EvalTask
from vlp.eval.templates import TEMPLATE_SETS


def tasks_root() -> Path:
    return Path(str(resources.files("vlp.data") / "tasks"))


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in tasks_root().glob("*.yaml"))


def _read(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise VLPError(f"task file {path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise VLPError(f"task file {path}: expected a mapping with class_path and init_args")
    if "kind" in spec:  # the format before task classes
        kinds = {c.kind: f"vlp.eval.{c.__name__}" for c in _task_classes() if c.__module__.startswith("vlp.")}
        cls = kinds.get(spec["kind"]) or " | ".join(kinds.values())
        raise VLPError(f"task file {path}: `kind:` is the old task format; write `class_path: {cls}` and the "
                       "other keys under `init_args:`")
    extra = set(spec) - {"class_path", "init_args"}
    if "class_path" not in spec or extra:
        raise VLPError(f"task file {path}: expected class_path and init_args" +
                       (f", got keys {sorted(extra)}" if extra else ""))
    args = spec.setdefault("init_args", {}) or {}
    if not isinstance(args, dict):
        raise VLPError(f"task file {path}: init_args must be a mapping")
    spec["init_args"] = args
    return spec


def load_task(name_or_path: str) -> EvalTask:
    """A built-in task by name, or a task YAML file by path, built by jsonargparse."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = tasks_root() / f"{name_or_path}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, builtin_tasks(), n=4)
        raise VLPError(f"unknown eval task '{name_or_path}'" + (f"; close: {', '.join(close)}" if close else
                                                                 "; see `vlp eval --list`"))
    spec = _read(path)
    args = spec["init_args"]
    args.setdefault("name", path.stem)
    templates = args.get("templates")
    if isinstance(templates, str) and templates not in TEMPLATE_SETS and (path.parent / templates).is_file():
        args["templates"] = str(path.parent / templates)  # relative to the task file
    return build(spec, EvalTask, f"task file {path}")


def headline(result: dict) -> list[str]:
    """The headline metric names of a result (by its kind; unknown kinds: every top-1)."""
    for cls in _task_classes():
        if cls.kind == result.get("kind"):
            return cls.headline_metrics(result["metrics"])
    return [k for k in result["metrics"] if k.endswith("_top1")]


def _task_classes(cls: type = EvalTask) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_task_classes(sub)]
    return found


def task_summary(result: dict) -> str:
    """The headline metrics of a result, for printing."""
    m = result["metrics"]
    return "  ".join(f"{k} {100 * m[k]:.1f}%" for k in headline(result) if not math.isnan(m[k]))

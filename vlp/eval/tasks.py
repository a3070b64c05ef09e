"""Evaluation tasks as data: a YAML file names the shards, the kind and its fields.

    name: emoji_google_test_retrieval   # optional, defaults to the file name
    kind: retrieval                     # or zeroshot
    shards: builtin:emoji/google/test-*.tar
    caption_key: txt                    # retrieval: the caption field
    label_field: category               # zeroshot: the json field with the label
    classnames: [...]                   # zeroshot: optional; default = sorted labels seen
    templates: ["{}", "an emoji of {}"] # zeroshot: prompt templates

Built-in tasks live in ``vlp/data/tasks``; ``vlp.eval.tasks.load_task`` takes their
name or a path to a YAML file.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
import yaml

from vlp.errors import VLPError
from vlp.eval.retrieval import retrieval_metrics
from vlp.eval.zeroshot import classification_metrics, zeroshot_classifier


@dataclass
class Task:
    name: str
    kind: Literal["retrieval", "zeroshot"]
    shards: str
    caption_key: str = "txt"
    label_field: str | None = None
    classnames: list[str] | None = None
    templates: list[str] = field(default_factory=lambda: ["{}"])

    def __post_init__(self):
        if self.kind not in ("retrieval", "zeroshot"):
            raise VLPError(f"task {self.name}: kind must be retrieval or zeroshot, got {self.kind!r}")
        if self.kind == "zeroshot" and not self.label_field:
            raise VLPError(f"task {self.name}: a zeroshot task needs label_field")


def tasks_root() -> Path:
    return Path(str(resources.files("vlp.data") / "tasks"))


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in tasks_root().glob("*.yaml"))


def load_task(name_or_path: str) -> Task:
    """A built-in task by name, or a task YAML file by path; unknown keys are errors."""
    path = Path(name_or_path)
    if not path.suffix:
        path = tasks_root() / f"{name_or_path}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, builtin_tasks(), n=4)
        raise VLPError(f"unknown eval task '{name_or_path}'" + (f"; close: {', '.join(close)}" if close else ""))
    spec = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(Task)}
    unknown = set(spec) - known
    if unknown:
        raise VLPError(f"task file {path}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
    spec.setdefault("name", path.stem)
    try:
        return Task(**spec)
    except TypeError as e:
        raise VLPError(f"task file {path}: {e}") from None


@torch.no_grad()
def run_task(module, task: Task, data, batch_size: int = 256) -> dict:
    """Evaluate ``module`` (encode_image / encode_text) on ``task`` with ``data``'s
    tokenizer and eval transforms. Returns ``{"task", "metrics", "num_samples", "seconds"}``."""
    start = time.perf_counter()
    device = module.device
    was_training = module.training
    module.eval()
    meta = (task.label_field,) if task.kind == "zeroshot" else ()
    images, texts, labels = [], [], []
    for batch in data.eval_stream(task.shards, meta, task.caption_key, batch_size):
        images.append(module.encode_image(batch["image"].to(device)).float().cpu())
        if task.kind == "retrieval":
            texts.append(module.encode_text(batch["text"].to(device)).float().cpu())
        else:
            labels += batch[task.label_field]
    image_emb = torch.cat(images)
    if task.kind == "retrieval":
        text_emb = torch.cat(texts)
        metrics = retrieval_metrics(image_emb, text_emb, torch.arange(len(text_emb)))
    else:
        classnames = task.classnames or sorted(set(labels))
        index = {c: i for i, c in enumerate(classnames)}
        unknown = sorted(set(labels) - index.keys())
        if unknown:
            raise VLPError(f"task {task.name}: labels {unknown[:5]} are not among its classnames")
        weights = zeroshot_classifier(module.encode_text, data.tokenizer, classnames, task.templates, device)
        logits = image_emb @ weights.cpu().T
        metrics = classification_metrics(logits, torch.tensor([index[x] for x in labels]))
    module.train(was_training)
    return {"task": task.name, "metrics": metrics, "num_samples": len(image_emb),
            "seconds": time.perf_counter() - start}

"""Evaluation tasks as data: a YAML file names the shards, the kind and its fields.

    kind: zeroshot                      # zeroshot | retrieval | linear_probe | few_shot
    shards: builtin:emoji/google/test-*.tar   # the test set (path, brace/glob pattern, a::b)
    description: ...                    # optional, shown nowhere but kept in results
    # retrieval
    captions: [txt]                     # caption fields: a member (txt) or a json path
                                        # (labels.de); a list-valued field gives several
    # zeroshot / linear_probe / few_shot
    label_field: category               # json path of the label
    classnames: [...]                   # optional; default = sorted labels seen
    templates: imagenet80               # zeroshot/few_shot: a set name, a list or a file
    # linear_probe / few_shot
    train_shards: builtin:emoji/google/train-*.tar
    val_fraction: 0.2                   # linear_probe: held out to pick the weight decay
    weight_decays: [1.0e-6, ..., 0.1]
    shots: [1, 5, 10]                   # few_shot
    seeds: 3
    inits: [random, text]
    steps: 100
    lr: 0.003
    weight_decay: 0.0

Built-in tasks live in ``vlp/data/tasks``; ``load_task`` takes their name or a YAML path.
"""

from __future__ import annotations

import difflib
import math
import time
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import torch
import yaml

from vlp.errors import VLPError
from vlp.eval.features import EvalData, extract_features
from vlp.eval.probe import few_shot, linear_probe
from vlp.eval.retrieval import retrieval_metrics
from vlp.eval.templates import fill, resolve_templates
from vlp.eval.zeroshot import classification_metrics

KINDS = ("retrieval", "zeroshot", "linear_probe", "few_shot")


@dataclass
class Task:
    name: str
    kind: str
    shards: str
    description: str = ""
    captions: list[str] = field(default_factory=lambda: ["txt"])
    label_field: str | None = None
    classnames: list[str] | None = None
    templates: str | list[str] = "imagenet80"
    train_shards: str | None = None
    val_fraction: float = 0.2
    weight_decays: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    seeds: int = 3
    inits: list[str] = field(default_factory=lambda: ["random", "text"])
    steps: int = 100
    lr: float = 3e-3
    weight_decay: float = 0.0
    base_dir: str | None = None  # the task file's folder, for relative template files

    def __post_init__(self):
        where = f"task {self.name}"
        if self.kind not in KINDS:
            raise VLPError(f"{where}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.captions, str):
            self.captions = [self.captions]
        if self.kind == "retrieval" and not self.captions:
            raise VLPError(f"{where}: a retrieval task needs captions (e.g. [txt])")
        if self.kind != "retrieval" and not self.label_field:
            raise VLPError(f"{where}: a {self.kind} task needs label_field")
        if self.kind in ("linear_probe", "few_shot") and not self.train_shards:
            raise VLPError(f"{where}: a {self.kind} task needs train_shards")
        if self.kind in ("zeroshot", "few_shot"):
            self.templates = resolve_templates(self.templates, Path(self.base_dir) if self.base_dir else None)
        if not 0 < self.val_fraction < 1:
            raise VLPError(f"{where}: val_fraction must be in (0, 1), got {self.val_fraction}")
        bad = set(self.inits) - {"random", "text"}
        if bad:
            raise VLPError(f"{where}: inits must be random and/or text, got {sorted(bad)}")
        if any(k < 1 for k in self.shots) or self.seeds < 1:
            raise VLPError(f"{where}: shots and seeds must be >= 1")


def tasks_root() -> Path:
    return Path(str(resources.files("vlp.data") / "tasks"))


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in tasks_root().glob("*.yaml"))


def load_task(name_or_path: str) -> Task:
    """A built-in task by name, or a task YAML file by path; unknown keys are errors."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = tasks_root() / f"{name_or_path}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, builtin_tasks(), n=4)
        raise VLPError(f"unknown eval task '{name_or_path}'" + (f"; close: {', '.join(close)}" if close else
                                                                 "; see `vlp eval --list`"))
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise VLPError(f"task file {path}: expected a mapping of task fields")
    known = {f.name for f in fields(Task)} - {"base_dir"}
    unknown = set(spec) - known
    if unknown:
        raise VLPError(f"task file {path}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
    spec.setdefault("name", path.stem)
    spec["base_dir"] = str(path.parent)
    try:
        return Task(**spec)
    except TypeError as e:
        raise VLPError(f"task file {path}: {e}") from None


def logit_scale(module) -> float:
    """exp of the first objective's learnt ``logit_scale`` (100, CLIP's cap, when none has one)."""
    for objective in getattr(module, "objectives", []):
        scale = getattr(objective, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            return float(scale.detach().float().exp())
    return 100.0


@torch.no_grad()
def zeroshot_weights(module, data: EvalData, classnames: list[str], templates: list[str],
                     rank: int = 0, world: int = 1) -> torch.Tensor:
    """``[C, E]`` zero-shot classifier; classes are split across ranks and gathered."""
    from vlp.eval.features import gather_objects
    from vlp.eval.zeroshot import zeroshot_classifier

    mine = list(range(rank, len(classnames), world))
    local = zeroshot_classifier(module.encode_text, data.tokenizer, [classnames[i] for i in mine],
                                templates, module.device, fill=fill) if mine else None
    parts = gather_objects((mine, local), world)
    out = [None] * len(classnames)
    for idx, weights in parts:
        for j, i in enumerate(idx):
            out[i] = weights[j]
    return torch.stack(out)


def _label_ids(task: Task, labels: list, classnames: list[str], what: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classnames)}
    unknown = sorted({str(x) for x in labels} - index.keys())
    if unknown:
        raise VLPError(f"task {task.name}: {what} labels {unknown[:5]} are not among its classnames")
    return torch.tensor([index[str(x)] for x in labels])


@torch.no_grad()
def run_task(module, task: Task, data: EvalData, batch_size: int = 256, rank: int = 0, world: int = 1,
             autocast=None) -> dict:
    """Evaluate ``module`` (``encode_image`` / ``encode_text``) on ``task``.

    With ``world > 1`` every rank calls this with its rank: the embedding work is split,
    the metrics (computed on every rank from the gathered embeddings) are the same as in
    one process. Returns ``{"task", "kind", "dataset", "metrics", "num_samples", "seconds",
    "details"}``."""
    start = time.perf_counter()
    was_training = module.training
    module.eval()
    kw = dict(batch_size=batch_size, rank=rank, world=world, autocast=autocast)
    details: dict = {}
    try:
        if task.kind == "retrieval":
            feats = extract_features(module, task.shards, data, captions=task.captions, **kw)
            if len(feats.text) == 0:
                raise VLPError(f"task {task.name}: no captions found in fields {task.captions}")
            metrics = retrieval_metrics(feats.image, feats.text, feats.text_owner)
            details = {"num_texts": len(feats.text)}
        else:
            feats = extract_features(module, task.shards, data, label_field=task.label_field, **kw)
            train = None
            if task.train_shards:
                train = extract_features(module, task.train_shards, data, label_field=task.label_field, **kw)
            seen = set(map(str, feats.labels)) | (set(map(str, train.labels)) if train else set())
            classnames = task.classnames or sorted(seen)
            y = _label_ids(task, feats.labels, classnames, "test")
            if task.kind in ("zeroshot", "few_shot"):
                weights = zeroshot_weights(module, data, classnames, task.templates, rank, world).cpu()
            if task.kind == "zeroshot":
                metrics = classification_metrics(feats.image @ weights.T, y)
            elif task.kind == "linear_probe":
                train_y = _label_ids(task, train.labels, classnames, "train")
                metrics, details = linear_probe(train.image, train_y, feats.image, y, len(classnames),
                                                task.weight_decays, task.val_fraction)
            else:
                train_y = _label_ids(task, train.labels, classnames, "train")
                metrics, details = few_shot(train.image, train_y, feats.image, y, weights, logit_scale(module),
                                            task.shots, task.seeds, task.inits, task.steps, task.lr,
                                            task.weight_decay)
            details["num_classes"] = len(classnames)
            if train is not None:
                details["num_train_samples"] = len(train)
    finally:
        module.train(was_training)
    dataset = {"shards": task.shards}
    if task.train_shards:
        dataset["train_shards"] = task.train_shards
    return {"task": task.name, "kind": task.kind, "dataset": dataset, "metrics": metrics,
            "num_samples": len(feats), "seconds": round(time.perf_counter() - start, 3), "details": details}


HEADLINE = {
    "retrieval": ["image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"],
    "zeroshot": ["top1", "top5", "mean_per_class_recall"],
    "linear_probe": ["top1", "mean_per_class_recall"],
}


def headline(result: dict) -> list[str]:
    """The headline metric names of a result (few_shot: every (init, k) mean)."""
    keys = HEADLINE.get(result.get("kind"))
    if keys is None:
        keys = [k for k in result["metrics"] if k.endswith("_top1") and not k.endswith("_std")]
    return [k for k in keys if k in result["metrics"]]


def task_summary(result: dict) -> str:
    """The headline metrics of a result, for printing."""
    m = result["metrics"]
    return "  ".join(f"{k} {100 * m[k]:.1f}%" for k in headline(result) if not math.isnan(m[k]))

"""The base of every eval task kind and the one JSON result format.

A task is built like every other vlp part, from ``class_path`` / ``init_args`` (see
vlp.eval.tasks.load_task). It reads the module through ``module.embed(name, x) -> [B, E]``
(L2-normalised) for the two names it compares (``embeddings``: ``image`` for the samples' images
and ``text`` for texts by default; e.g. a second language's text tower, or an image name on both
sides) and, for few-shot, ``module.similarity_scale(a, b)``. On several ranks every rank calls
``run`` with its rank: each runs the same number of forward passes and all return the
one-process result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import torch

from vlp.data.eval_set import EvalData
from vlp.data.holdout import Holdout
from vlp.errors import VLPError
from vlp.eval.features import Features, extract_features


class EvalRun:
    """One task's run on one rank: the module, the data side and how to split the work."""

    def __init__(self, module, data: EvalData, rank: int = 0, world: int = 1, batch_size: int = 256,
                 autocast: Callable | None = None, embeddings: tuple[str, str] = ("image", "text")):
        self.module, self.data = module, data
        self.embeddings = tuple(embeddings)
        self.rank, self.world = rank, world
        self.batch_size = batch_size
        self.autocast = autocast

    def features(self, shards: str | list[str], captions: list[str] = (), label_field: str | None = None,
                 holdout: Holdout | None = None) -> Features:
        return extract_features(self.module, shards, self.data, captions=captions, label_field=label_field,
                                batch_size=self.batch_size, rank=self.rank, world=self.world, autocast=self.autocast,
                                holdout=holdout, embeddings=self.embeddings)

    def similarity_scale(self) -> float:
        """The temperature the model scores its two embeddings with (vlp.module.VLPModule)."""
        return self.module.similarity_scale(*self.embeddings)


class EvalTask:
    """An evaluation of one kind on one set of shards.

    Args:
        shards: the eval set: a path, brace / glob pattern, ``builtin:emoji/...``, ``a::b``.
        name: the task's name in results (default: the task file's name).
        description: what the task measures (kept with the task, not in results).
        holdout: evaluate only the samples of ``shards`` that this hold-out sets aside
            (``{fraction, seed}`` or a fraction, as ``data.holdout``; vlp.data.holdout): the
            validation set of a run that trained on ``shards`` with that hold-out.
        embeddings: the model's names that embed the samples' images and the texts
            (``module.embed(name, x)``): ``[image, text]``, or e.g. ``[image, text_zh]``.

    A kind sets ``kind`` (the result's ``kind``), ``headline`` (the metrics printed and put
    in tables) and ``evaluate``.
    """

    kind: ClassVar[str] = ""
    headline: ClassVar[tuple[str, ...]] = ()

    def __init__(self, shards: str, name: str | None = None, description: str = "",
                 holdout: float | dict | None = None, embeddings: tuple[str, str] = ("image", "text")):
        if len(embeddings) != 2 or not all(isinstance(e, str) and e for e in embeddings):
            raise VLPError(f"embeddings names the two embeddings a task compares, e.g. [image, text]; got "
                           f"{list(embeddings)}")
        self.embeddings = tuple(embeddings)
        self.shards = shards
        self.name = name or type(self).__name__
        self.description = description
        self.holdout = Holdout.of(holdout)

    def evaluate(self, run: EvalRun) -> tuple[dict[str, float], dict, int]:
        """``(metrics, details, number of eval samples)``."""
        raise NotImplementedError

    def dataset(self) -> dict:
        return {"shards": self.shards, **({"holdout": self.holdout.spec()} if self.holdout else {})}

    @classmethod
    def headline_metrics(cls, metrics: dict) -> list[str]:
        return [k for k in cls.headline if k in metrics]

    @torch.no_grad()
    def run(self, module, data: EvalData, rank: int = 0, world: int = 1, batch_size: int = 256,
            autocast: Callable | None = None) -> dict:
        """Evaluate ``module`` in eval mode. Returns ``{"task", "kind", "dataset", "metrics",
        "num_samples", "seconds", "details"}``, the same on every rank."""
        start = time.perf_counter()
        was_training = module.training
        module.eval()
        try:
            metrics, details, num_samples = self.evaluate(EvalRun(module, data, rank, world, batch_size, autocast,
                                                                  self.embeddings))
        finally:
            module.train(was_training)
        return {"task": self.name, "kind": self.kind, "dataset": self.dataset(), "metrics": metrics,
                "num_samples": num_samples, "seconds": round(time.perf_counter() - start, 3), "details": details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, shards={self.shards!r})"


def label_ids(task: EvalTask, labels: list, classnames: list[str], what: str) -> torch.Tensor:
    """``[N]`` class numbers of ``labels``; a label outside ``classnames`` is an error."""
    index = {c: i for i, c in enumerate(classnames)}
    unknown = sorted({str(x) for x in labels} - index.keys())
    if unknown:
        raise VLPError(f"task {task.name}: {what} labels {unknown[:5]} are not among its classnames")
    return torch.tensor([index[str(x)] for x in labels])


def labelled_train_test(task: EvalTask, run: EvalRun):
    """The features of a task's test set (``task.shards``) and train set (``task.train_shards``),
    the classes (``task.classnames``, or every label seen in either), and both label tensors:
    ``(test, train, classnames, test_y, train_y)``; the probes (linear, few-shot) start here."""
    test = run.features(task.shards, label_field=task.label_field, holdout=task.holdout)
    train = run.features(task.train_shards, label_field=task.label_field)
    classnames = task.classnames or sorted(set(map(str, test.labels)) | set(map(str, train.labels)))
    return (test, train, classnames, label_ids(task, test.labels, classnames, "test"),
            label_ids(task, train.labels, classnames, "train"))


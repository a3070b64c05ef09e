"""Few-shot linear heads on frozen image features (as in ELEVATER).

``k`` examples per class drawn with several seeds; a linear head trained on them with
full-batch AdamW for a fixed number of steps, starting either from a random init or from
the class names: weights = logit_scale x the zero-shot classifier (mean of normalised
prompt embeddings, renormalised), bias 0, so that before training the head *is* the
zero-shot classifier. The head keeps the model's logit scale as a fixed factor (see
LinearHead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlp.errors import VLPError
from vlp.eval.base import EvalRun, EvalTask, labelled_train_test
from vlp.eval.metrics import classification_metrics
from vlp.eval.templates import resolve_templates
from vlp.eval.zeroshot import zeroshot_weights


def sample_shots(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of ``k`` examples of every class present (all of a class with fewer)."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        picked.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(picked).sort().values


class LinearHead(torch.nn.Module):
    """``logits = scale * x @ weight^T + bias``: the model's temperature times cosine scores.

    ``weight`` starts at ``init_weight`` (the zero-shot classifier for the class-name init) or
    at random unit-norm rows drawn from ``generator``; the fixed ``scale`` keeps both inits on
    the footing of the model's own logits, so one learning rate suits both.
    """

    def __init__(self, dim: int, num_classes: int, scale: float, init_weight: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if init_weight is None:
            init_weight = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=-1)
        self.scale = float(scale)
        self.weight = torch.nn.Parameter(init_weight.clone().float())
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x @ self.weight.T + self.bias


def text_init_head(classifier: torch.Tensor, logit_scale: float) -> LinearHead:
    """The head whose logits equal the zero-shot logits ``logit_scale * x @ classifier^T``:
    the class-name text embeddings scaled by the logit scale, bias 0."""
    return LinearHead(classifier.shape[1], classifier.shape[0], logit_scale, init_weight=classifier)


def train_head(head: LinearHead, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
               weight_decay: float) -> LinearHead:
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(head(x), y).backward()
            opt.step()
    return head


def few_shot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             classifier: torch.Tensor, logit_scale: float, shots: list[int], seeds: int,
             inits: list[str], steps: int, lr: float, weight_decay: float) -> tuple[dict[str, float], dict]:
    """Metrics ``{init}_{k}shot_top1`` (mean over seeds) and ``..._top1_std``, plus
    ``zeroshot_top1`` (the text head before training) for reference."""
    metrics = {"zeroshot_top1": classification_metrics(logit_scale * test_x @ classifier.T, test_y)["top1"]}
    per_run = {}
    for k in shots:
        for init in inits:
            scores = []
            for seed in range(seeds):
                idx = sample_shots(train_y, k, seed)
                g = torch.Generator().manual_seed(10_000 + seed)
                head = (text_init_head(classifier, logit_scale) if init == "text"
                        else LinearHead(train_x.shape[1], classifier.shape[0], logit_scale, generator=g))
                train_head(head, train_x[idx], train_y[idx], steps, lr, weight_decay)
                with torch.no_grad():
                    scores.append(classification_metrics(head(test_x), test_y)["top1"])
            t = torch.tensor(scores)
            metrics[f"{init}_{k}shot_top1"] = t.mean().item()
            metrics[f"{init}_{k}shot_top1_std"] = t.std().item() if len(t) > 1 else 0.0
            per_run[f"{init}_{k}shot"] = scores
    return metrics, {"per_seed_top1": per_run}


class FewShot(EvalTask):
    """Few-shot: ``k`` labelled examples per class from ``train_shards``, a linear head per
    (k, init, seed), scored on ``shards``.

    Args:
        shards: the eval set (path, brace / glob pattern, ``builtin:emoji/...``, ``a::b``).
        label_field: the label of a sample: a member or a json path (``category``).
        train_shards: the set the shots are drawn from.
        classnames: the classes, in order; None = the sorted labels found in both sets.
        templates: the prompts of the class-name init (as in ZeroShotClassification).
        shots: the k (examples per class).
        seeds: draws of the shots per k.
        inits: ``random`` (unit rows) and / or ``text`` (the zero-shot classifier).
        steps: full-batch AdamW steps.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        name: the task's name in results (default: the task file's name).
        description: what the task measures.
        holdout: only the samples of ``shards`` (not ``train_shards``) this hold-out sets aside
            (vlp.eval.EvalTask).

    Metrics: ``{init}_{k}shot_top1`` (mean over seeds) and ``..._std``, ``zeroshot_top1``.
    """

    kind = "few_shot"

    def __init__(self, shards: str, label_field: str, train_shards: str, classnames: list[str] | None = None,
                 templates: str | list[str] = "imagenet80", shots: list[int] = (1, 5, 10), seeds: int = 3,
                 inits: list[str] = ("random", "text"), steps: int = 100, lr: float = 3e-3,
                 weight_decay: float = 0.0, name: str | None = None, description: str = "",
                 holdout: float | dict | None = None,
                 embeddings: tuple[str, str] = ("image", "text")):
        super().__init__(shards, name, description, holdout, embeddings)
        if not label_field:
            raise VLPError("label_field is empty")
        if not train_shards:
            raise VLPError("train_shards is empty")
        bad = set(inits) - {"random", "text"}
        if bad or not inits:
            raise VLPError(f"inits must be random and/or text, got {sorted(bad) or list(inits)}")
        if not shots or any(k < 1 for k in shots) or seeds < 1:
            raise VLPError("shots and seeds must be >= 1")
        self.label_field = label_field
        self.train_shards = train_shards
        self.classnames = classnames
        self.templates = resolve_templates(templates)
        self.shots, self.seeds, self.inits = list(shots), seeds, list(inits)
        self.steps, self.lr, self.weight_decay = steps, lr, weight_decay

    def dataset(self) -> dict:
        return {**super().dataset(), "train_shards": self.train_shards}

    @classmethod
    def headline_metrics(cls, metrics: dict) -> list[str]:
        return [k for k in metrics if k.endswith("_top1")]

    def evaluate(self, run: EvalRun) -> tuple[dict[str, float], dict, int]:
        test, train, classnames, y, train_y = labelled_train_test(self, run)
        weights = zeroshot_weights(run.module, run.data, classnames, self.templates, run.rank, run.world,
                                   run.embeddings[1]).cpu()
        metrics, details = few_shot(train.image, train_y, test.image, y, weights, run.similarity_scale(), self.shots,
                                    self.seeds, self.inits, self.steps, self.lr, self.weight_decay)
        return metrics, {**details, "num_classes": len(classnames), "num_train_samples": len(train)}, len(test)

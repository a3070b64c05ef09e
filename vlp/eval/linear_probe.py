"""Linear probe on frozen image features (as in CLIP's evaluation).

Multinomial logistic regression fitted to convergence with L-BFGS on the training
features, its L2 weight decay picked on a held-out validation split of the training set,
refitted on the whole training set, scored on test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlp.errors import VLPError
from vlp.eval.base import EvalRun, EvalTask, labelled_train_test
from vlp.eval.metrics import classification_metrics


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                            max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``mean CE(x W^T + b, y) + weight_decay / 2 * |W|^2`` (bias not decayed)."""
    x = x.double()
    w = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


def split_train_val(n: int, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, weight_decays: list[float], val_fraction: float = 0.2,
                 seed: int = 0) -> tuple[dict[str, float], dict]:
    """Returns the test metrics and the sweep (validation top-1 per weight decay, the choice)."""
    fit_idx, val_idx = split_train_val(len(train_x), val_fraction, seed)
    sweep = {}
    for wd in weight_decays:
        w, b = fit_logistic_regression(train_x[fit_idx], train_y[fit_idx], num_classes, wd)
        pred = (train_x[val_idx] @ w.T + b).argmax(1)
        sweep[wd] = (pred == train_y[val_idx]).float().mean().item()
    # best validation accuracy; among ties the strongest regularisation
    best = max(sorted(weight_decays, reverse=True), key=lambda wd: sweep[wd])
    w, b = fit_logistic_regression(train_x, train_y, num_classes, best)
    metrics = classification_metrics(test_x @ w.T + b, test_y)
    return metrics, {"weight_decay": best, "val_top1": {str(k): v for k, v in sweep.items()}}


class LinearProbe(EvalTask):
    """Linear probe: logistic regression on the frozen image embeddings of ``train_shards``,
    scored on ``shards``.

    Args:
        shards: the eval set (path, brace / glob pattern, ``builtin:emoji/...``, ``a::b``).
        label_field: the label of a sample: a member or a json path (``category``).
        train_shards: the set the probe is fitted on.
        classnames: the classes, in order; None = the sorted labels found in both sets.
        val_fraction: share of the training set held out to pick the weight decay.
        weight_decays: the L2 weight decays tried.
        name: the task's name in results (default: the task file's name).
        description: what the task measures.
        holdout: only the samples of ``shards`` (not ``train_shards``) this hold-out sets aside
            (vlp.eval.EvalTask).

    Metrics: ``top1``, ``top5`` (with at least 5 classes), ``mean_per_class_recall``.
    """

    kind = "linear_probe"
    headline = ("top1", "mean_per_class_recall")

    def __init__(self, shards: str, label_field: str, train_shards: str, classnames: list[str] | None = None,
                 val_fraction: float = 0.2, weight_decays: list[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
                 name: str | None = None, description: str = "",
                 holdout: float | dict | None = None,
                 embeddings: tuple[str, str] = ("image", "text")):
        super().__init__(shards, name, description, holdout, embeddings)
        if not label_field:
            raise VLPError("label_field is empty")
        if not train_shards:
            raise VLPError("train_shards is empty")
        if not 0 < val_fraction < 1:
            raise VLPError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if not weight_decays:
            raise VLPError("weight_decays is empty")
        self.label_field = label_field
        self.train_shards = train_shards
        self.classnames = classnames
        self.val_fraction = val_fraction
        self.weight_decays = list(weight_decays)

    def dataset(self) -> dict:
        return {**super().dataset(), "train_shards": self.train_shards}

    def evaluate(self, run: EvalRun) -> tuple[dict[str, float], dict, int]:
        test, train, classnames, y, train_y = labelled_train_test(self, run)
        metrics, details = linear_probe(train.image, train_y, test.image, y, len(classnames), self.weight_decays,
                                        self.val_fraction)
        return metrics, {**details, "num_classes": len(classnames), "num_train_samples": len(train)}, len(test)

"""Classification metrics of eval tasks, computed by torchmetrics."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_recall


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """top-k accuracy (the label among the k highest logits) and mean per-class recall of
    ``logits [N, C]`` against ``labels [N]``.

    The mean runs over the classes present in ``labels`` (as CLIP_benchmark): torchmetrics'
    ``average="macro"`` would also count a class that is predicted but never present, as 0.
    """
    num_classes = logits.shape[1]
    out = {}
    for k in ks:
        if k <= num_classes:
            out[f"top{k}"] = multiclass_accuracy(logits, labels, num_classes, average="micro", top_k=k).item()
    recall = multiclass_recall(logits, labels, num_classes, average="none")
    present = torch.bincount(labels, minlength=num_classes) > 0
    out["mean_per_class_recall"] = recall[present].mean().item()
    return out

"""Classification metrics (vlp.eval.metrics): top-k accuracy and the mean per-class recall over
the classes present, by hand and against torchmetrics."""

import pytest
import torch

from vlp.eval.metrics import classification_metrics


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1.0, 3.0, 0.0], [2.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(logits, labels, ks=(1, 2))
    assert m["top1"] == 2 / 4  # rows 0 and 2
    assert m["top2"] == 3 / 4  # row 1: top2 = {2, 1} hit; row 3: {0, 1} miss
    # per class recall: class 0: 1/1, class 1: 1/2, class 2: 0/1
    assert abs(m["mean_per_class_recall"] - (1 + 0.5 + 0) / 3) < 1e-6


def test_classification_metrics_agree_with_torchmetrics():
    from torchmetrics.functional.classification import multiclass_accuracy

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 7, generator=g)
    labels = torch.randint(0, 7, (200,), generator=g)
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(multiclass_accuracy(logits, labels, 7, average="micro").item())
    assert m["top5"] == pytest.approx(multiclass_accuracy(logits, labels, 7, average="micro", top_k=5).item())
    assert m["mean_per_class_recall"] == pytest.approx(
        multiclass_accuracy(logits, labels, 7, average="macro").item())

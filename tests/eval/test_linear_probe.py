"""The linear probe (vlp.eval.linear_probe): L-BFGS logistic regression at the optimum of its
regularised loss, the weight decay chosen on the validation split."""

import pytest
import torch
import torch.nn.functional as F

from vlp.eval.linear_probe import fit_logistic_regression, linear_probe


def test_logistic_regression_reaches_its_optimum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(1)
    w, b = fit_logistic_regression(x, y, 3, weight_decay=1e-2)
    w, b = w.double().requires_grad_(), b.double().requires_grad_()
    loss = F.cross_entropy(x.double() @ w.T + b, y) + 0.5 * 1e-2 * w.pow(2).sum()
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert gw.abs().max() < 1e-4 and gb.abs().max() < 1e-4  # stationary point of a convex loss
    assert ((x @ w.detach().float().T + b.detach().float()).argmax(1) == y).float().mean() > 0.9


def test_linear_probe_picks_the_weight_decay_by_validation():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=g) * 2
    y = torch.randint(0, 4, (200,), generator=g)
    x = centers[y] + torch.randn(200, 6, generator=g)
    metrics, details = linear_probe(x[:150], y[:150], x[150:], y[150:], 4, [1e-4, 1e-2, 10.0])
    assert set(details["val_top1"]) == {"0.0001", "0.01", "10.0"}
    assert details["val_top1"][str(details["weight_decay"])] == max(details["val_top1"].values())
    assert metrics["top1"] > 0.7
    # scored by the head refitted on the whole training set with the chosen weight decay
    w, b = fit_logistic_regression(x[:150], y[:150], 4, details["weight_decay"])
    assert metrics["top1"] == pytest.approx(((x[150:] @ w.T + b).argmax(1) == y[150:]).float().mean().item())

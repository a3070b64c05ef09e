"""Linear heads on frozen image features: linear probe and few-shot.

Linear probe (as in CLIP's evaluation): multinomial logistic regression fitted to
convergence with L-BFGS on the training features, its L2 weight decay picked on a held-out
validation split of the training set, refitted on the whole training set, scored on test.

Few-shot (as in ELEVATER): ``k`` examples per class drawn with several seeds; a linear head
trained on them with full-batch AdamW for a fixed number of steps, starting either from a
random init or from the class names: weights = logit_scale x the zero-shot classifier
(mean of normalised prompt embeddings, renormalised), bias 0, so that before training the
head *is* the zero-shot classifier. Both heads keep the model's logit scale as a fixed
factor (see LinearHead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlp.eval.zeroshot import classification_metrics


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

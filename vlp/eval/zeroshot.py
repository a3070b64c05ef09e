"""Zero-shot classification with prompt ensembles (Radford et al. 2021, CLIP_benchmark)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


@torch.no_grad()
def zeroshot_classifier(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: list[str],
    templates: list[str],
    device: torch.device | str = "cpu",
    fill: Callable[[str, str], str] = str.format,
) -> torch.Tensor:
    """``[C, E]``: per class, the mean of its normalised template embeddings, renormalised."""
    weights = []
    for name in classnames:
        texts = [fill(t, name) for t in templates]
        emb = F.normalize(encode_text(tokenizer(texts).to(device)).float(), dim=-1)
        weights.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(weights)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """top-k accuracy and mean per-class recall of ``logits [N, C]`` against ``labels [N]``."""
    num_classes = logits.shape[1]
    out = {}
    for k in ks:
        if k <= num_classes:
            top = logits.topk(k, dim=1).indices
            out[f"top{k}"] = (top == labels[:, None]).any(1).float().mean().item()
    pred = logits.argmax(1)
    recalls = [(pred[labels == c] == c).float().mean() for c in range(num_classes) if (labels == c).any()]
    out["mean_per_class_recall"] = torch.stack(recalls).mean().item()
    return out

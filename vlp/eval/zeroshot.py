"""Zero-shot classification with prompt ensembles (Radford et al. 2021, CLIP_benchmark)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vlp.data.eval_set import EvalData, share_size
from vlp.errors import VLPError
from vlp.eval.base import EvalRun, EvalTask, label_ids
from vlp.eval.features import gather_objects
from vlp.eval.metrics import classification_metrics
from vlp.eval.templates import fill, resolve_templates


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


@torch.no_grad()
def zeroshot_weights(module, data: EvalData, classnames: list[str], templates: list[str],
                     rank: int = 0, world: int = 1) -> torch.Tensor:
    """``[C, E]`` zero-shot classifier. Class ``c`` is embedded by rank ``c % world``; every rank
    embeds ``ceil(C / world)`` classes (one short: its last class again, or class 0), so all
    run the same number of forward passes; the classes are gathered on every rank."""
    mine = list(range(rank, len(classnames), world))
    padded = mine + [mine[-1] if mine else 0] * (share_size(len(classnames), world) - len(mine))
    local = zeroshot_classifier(module.encode_text, data.texts, [classnames[i] for i in padded], templates,
                                module.device, fill=fill)
    out = [None] * len(classnames)
    for idx, weights in gather_objects((mine, local[: len(mine)].cpu()), world):
        for j, i in enumerate(idx):
            out[i] = weights[j]
    return torch.stack(out)


class ZeroShotClassification(EvalTask):
    """Zero-shot classification: the classifier of a class is the mean of its normalised
    prompt embeddings, renormalised; an image's class is the most similar one.

    Args:
        shards: the eval set (path, brace / glob pattern, ``builtin:emoji/...``, ``a::b``).
        label_field: the label of a sample: a member (``cls``) or a json path (``category``,
            ``labels.en``).
        classnames: the classes, in order; None = the sorted labels found.
        templates: the prompts: a set (``imagenet80``, ``imagenet7``, ``emoji``, ``name``), a
            list with ``{}`` for the class name, or a ``.txt`` / ``.yaml`` file.
        name: the task's name in results (default: the task file's name).
        description: what the task measures.

    Metrics: ``top1``, ``top5`` (with at least 5 classes), ``mean_per_class_recall``.
    """

    kind = "zeroshot"
    headline = ("top1", "top5", "mean_per_class_recall")

    def __init__(self, shards: str, label_field: str, classnames: list[str] | None = None,
                 templates: str | list[str] = "imagenet80", name: str | None = None, description: str = ""):
        super().__init__(shards, name, description)
        if not label_field:
            raise VLPError("label_field is empty")
        self.label_field = label_field
        self.classnames = classnames
        self.templates = resolve_templates(templates)

    def evaluate(self, run: EvalRun) -> tuple[dict[str, float], dict, int]:
        feats = run.features(self.shards, label_field=self.label_field)
        classnames = self.classnames or sorted(set(map(str, feats.labels)))
        y = label_ids(self, feats.labels, classnames, "test")
        weights = zeroshot_weights(run.module, run.data, classnames, self.templates, run.rank, run.world).cpu()
        return classification_metrics(feats.image @ weights.T, y), {"num_classes": len(classnames)}, len(feats)

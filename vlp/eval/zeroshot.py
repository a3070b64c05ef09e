"""Zero-shot classification with prompt ensembles (Radford et al. 2021, CLIP_benchmark)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vlp.data.eval_set import PAD, EvalData, EvalStream, sample_fields, share_size
from vlp.data.fields import Label
from vlp.data.holdout import Holdout
from vlp.data.shards import expand_shards
from vlp.distributed import gather_objects
from vlp.errors import VLPError
from vlp.eval.base import EvalRun, EvalTask, label_ids
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
                     rank: int = 0, world: int = 1, text: str = "text") -> torch.Tensor:
    """``[C, E]`` zero-shot classifier. Class ``c`` is embedded by rank ``c % world``; every rank
    embeds ``ceil(C / world)`` classes (one short: its last class again, or class 0), so all
    run the same number of forward passes; the classes are gathered on every rank. ``text``: the
    model's name that embeds the prompts (``module.embed``)."""
    mine = list(range(rank, len(classnames), world))
    padded = mine + [mine[-1] if mine else 0] * (share_size(len(classnames), world) - len(mine))
    local = zeroshot_classifier(lambda ids: module.embed(text, ids), data.texts, [classnames[i] for i in padded], templates,
                                module.device, fill=fill)
    out = [None] * len(classnames)
    for idx, weights in gather_objects((mine, local[: len(mine)].cpu())):
        for j, i in enumerate(idx):
            out[i] = weights[j]
    return torch.stack(out)


def set_labels(shards: list[str], label_field: str, holdout: Holdout | None = None) -> list:
    """Every sample's label in set order (with a ``holdout``: of its held-out samples), read
    without decoding images."""
    return [values["label"] for _, values in sample_fields(shards, {"label": Label(label_field)}, holdout)]


@torch.no_grad()
def decoder_scores(run: EvalRun, shards: list[str], classnames: list[str], templates: list[str],
                   decoder: str = "decoder", holdout: Holdout | None = None) -> torch.Tensor:
    """``[N, C]`` scores of the set's images in set order: per class, the mean
    over templates of the log-likelihood the captioning decoder gives the filled template
    (vlp.generation.Captioner.log_likelihood). Each rank scores its equal share."""
    from vlp.generation import Captioner

    captioner = Captioner(run.module, decoder)
    prompts = run.data.tokenizer([fill(t, c) for c in classnames for t in templates])  # class-major
    stream = EvalStream(shards, run.data.transform(), run.data.tokenizer, run.batch_size, (), None, run.rank,
                        run.world, holdout=holdout)
    loader = DataLoader(stream, batch_size=None, num_workers=run.data.num_workers)
    local: dict[int, torch.Tensor] = {}
    for batch in loader:
        with run.autocast() if run.autocast else nullcontext():
            ll = captioner.log_likelihood(batch["image"].to(run.module.device), prompts)
        per_class = ll.view(len(batch["index"]), len(classnames), len(templates)).mean(2).cpu()
        for index, row in zip(batch["index"].tolist(), per_class):
            if index != PAD:
                local[index] = row
    scores: dict[int, torch.Tensor] = {}
    for part in gather_objects(local):
        scores.update(part)
    if sorted(scores) != list(range(len(scores))):
        raise VLPError(f"decoder zero-shot scored samples {len(scores)} but not numbered 0..N-1")
    return torch.stack([scores[i] for i in range(len(scores))])


class ZeroShotClassification(EvalTask):
    """Zero-shot classification: the classifier of a class is the mean of its normalised
    prompt embeddings, renormalised; an image's class is the most similar one.

    ``scorer: decoder`` scores with a captioning model's decoder instead (CapPa, Tschannen
    et al. 2023): an image's class is the one whose filled templates the decoder finds most
    likely as its caption (mean over templates of the summed token log-probabilities, the
    end-of-text token included). It runs the decoder once per (image, class, template):
    a small template set (``emoji``, ``name``) keeps it fast.

    Args:
        shards: the eval set (path, brace / glob pattern, ``builtin:emoji/...``, ``a::b``).
        label_field: the label of a sample: a member (``cls``) or a json path (``category``,
            ``labels.en``).
        classnames: the classes, in order; None = the sorted labels found.
        templates: the prompts: a set (``imagenet80``, ``imagenet7``, ``emoji``, ``name``), a
            list with ``{}`` for the class name, or a ``.txt`` / ``.yaml`` file.
        scorer: ``contrastive`` (the embeddings) or ``decoder`` (the model's caption decoder, a
            head: vlp.heads.CaptionDecoder).
        decoder: with ``scorer: decoder``, the decoder's name in ``model.heads``.
        name: the task's name in results (default: the task file's name).
        description: what the task measures.
        holdout: only the samples of ``shards`` this hold-out sets aside (vlp.eval.EvalTask).

    Metrics: ``top1``, ``top5`` (with at least 5 classes), ``mean_per_class_recall``.
    """

    kind = "zeroshot"
    headline = ("top1", "top5", "mean_per_class_recall")

    def __init__(self, shards: str, label_field: str, classnames: list[str] | None = None,
                 templates: str | list[str] = "imagenet80", scorer: Literal["contrastive", "decoder"] = "contrastive",
                 decoder: str = "decoder", name: str | None = None, description: str = "",
                 holdout: float | dict | None = None,
                 embeddings: tuple[str, str] = ("image", "text")):
        super().__init__(shards, name, description, holdout, embeddings)
        if not label_field:
            raise VLPError("label_field is empty")
        if scorer not in ("contrastive", "decoder"):
            raise VLPError(f"unknown zero-shot scorer {scorer!r}: expected contrastive or decoder")
        self.label_field = label_field
        self.classnames = classnames
        self.templates = resolve_templates(templates)
        self.scorer, self.decoder = scorer, decoder

    def evaluate(self, run: EvalRun) -> tuple[dict[str, float], dict, int]:
        if self.scorer == "decoder":
            urls = expand_shards(self.shards)
            labels = set_labels(urls, self.label_field, self.holdout)
            classnames = self.classnames or sorted(set(map(str, labels)))
            y = label_ids(self, labels, classnames, "test")
            scores = decoder_scores(run, urls, classnames, self.templates, self.decoder, self.holdout)
            if len(scores) != len(y):
                raise VLPError(f"task {self.name}: scored {len(scores)} images of {len(y)} labelled samples")
            return classification_metrics(scores, y), {"num_classes": len(classnames), "scorer": "decoder"}, len(y)
        feats = run.features(self.shards, label_field=self.label_field, holdout=self.holdout)
        classnames = self.classnames or sorted(set(map(str, feats.labels)))
        y = label_ids(self, feats.labels, classnames, "test")
        weights = zeroshot_weights(run.module, run.data, classnames, self.templates, run.rank, run.world,
                                   run.embeddings[1]).cpu()
        return classification_metrics(feats.image @ weights.T, y), {"num_classes": len(classnames)}, len(feats)

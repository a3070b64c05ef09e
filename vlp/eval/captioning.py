"""Captioning: generate a caption per image and score it against the references."""

from __future__ import annotations

import unicodedata
from contextlib import nullcontext
from typing import Literal

from torch.utils.data import DataLoader

from vlp.data.eval_set import PAD, EvalStream, sample_fields
from vlp.data.fields import Caption
from vlp.data.shards import expand_shards
from vlp.distributed import gather_objects
from vlp.errors import VLPError
from vlp.eval.base import EvalRun, EvalTask
from vlp.eval.bleu import bleu
from vlp.eval.cider import cider_d
from vlp.eval.ptb_tokenize import caption_words


def normalised(text: str) -> str:
    """NFC, lowercase, single spaces (the built-in tokenizer lowercases what it generates)."""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def coco_words(hypotheses: list[str], references: list[list[str]]) -> tuple[list[list[str]], list[list[list[str]]]]:
    """The words of every caption as coco-caption's evaluation tokenises them: the references of
    all images as one text, in order, and the hypotheses as another (vlp.eval.ptb_tokenize)."""
    flat = caption_words([r for rs in references for r in rs])
    it = iter(flat)
    return caption_words(hypotheses), [[next(it) for _ in rs] for rs in references]


def caption_metrics(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """``cider`` (CIDEr-D, vlp.eval.cider) and ``bleu4`` (BLEU-4, vlp.eval.bleu) as coco-caption
    computes them from these captions (its PTB tokenisation, vlp.eval.ptb_tokenize), and
    ``exact_match`` (share of captions equal to one of their references, after ``normalised``)."""
    hyp_words, ref_words = coco_words(hypotheses, references)
    cider, _ = cider_d(hyp_words, ref_words)
    bleu4, _ = bleu(hyp_words, ref_words, max_n=4)
    exact = sum(normalised(h) in {normalised(r) for r in rs} for h, rs in zip(hypotheses, references))
    return {"cider": cider, "bleu4": bleu4, "exact_match": exact / max(len(hypotheses), 1)}


class Captioning(EvalTask):
    """Image captioning with the model's captioning objective (CoCa; vlp.generation.Captioner).

    Args:
        shards: the eval set (path, brace / glob pattern, ``builtin:emoji/...``, ``a::b``).
        references: the reference caption fields of a sample: a member (``txt``) or a json path
            (``labels.en``); a list-valued field gives several references.
        strategy, num_beams, max_length: generation settings (see Captioner.generate).
        examples: how many (image key, caption, references) to keep in the result's details.
        name, description, holdout: see EvalTask (``holdout``: only the held-out samples of ``shards``).

    Metrics: ``cider`` (CIDEr-D as coco-caption returns it: 1.0 is the "100" of papers),
    ``bleu4`` (coco-caption's BLEU-4), ``exact_match``.
    On several ranks each captions its equal share with ``max_length`` decoder steps (the same
    forward passes on every rank) and the captions are gathered.
    """

    kind = "captioning"
    headline = ("cider", "bleu4", "exact_match")

    def __init__(self, shards: str, references: str | list[str] = "txt", strategy: Literal["greedy", "beam"] = "greedy",
                 num_beams: int = 4, max_length: int | None = None, examples: int = 5, name: str | None = None,
                 description: str = "", holdout: float | dict | None = None,
                 embeddings: tuple[str, str] = ("image", "text")):
        super().__init__(shards, name, description, holdout, embeddings)
        self.references = [references] if isinstance(references, str) else list(references)
        if not self.references:
            raise VLPError("references is empty: give the reference caption fields, e.g. [txt]")
        self.strategy, self.num_beams, self.max_length = strategy, num_beams, max_length
        self.examples = examples

    def _reference_texts(self, urls: list[str]) -> tuple[list[str], list[list[str]]]:
        """Keys and references of every sample in set order (no image decoding)."""
        keys, refs = [], []
        for sample, values in sample_fields(urls, {"refs": Caption(keys=self.references, all=True)}, self.holdout):
            keys.append(sample["__key__"])
            refs.append(values["refs"])
        return keys, refs

    def evaluate(self, run: EvalRun) -> tuple[dict[str, float], dict, int]:
        from vlp.generation import Captioner

        captioner = Captioner(run.module)
        urls = expand_shards(self.shards)
        stream = EvalStream(urls, run.data.transform(), run.data.tokenizer, run.batch_size, (), None, run.rank,
                            run.world, holdout=self.holdout)
        loader = DataLoader(stream, batch_size=None, num_workers=run.data.num_workers)
        device = run.module.device
        local: dict[int, str] = {}
        for batch in loader:
            with run.autocast() if run.autocast else nullcontext():
                out = captioner.generate(batch["image"].to(device), self.strategy, num_beams=self.num_beams,
                                         max_length=self.max_length, fixed_steps=run.world > 1)
            for index, text in zip(batch["index"].tolist(), run.data.tokenizer.decode(out.ids.cpu())):
                if index != PAD:
                    local[index] = text
        captions: dict[int, str] = {}
        for part in gather_objects(local):
            captions.update(part)
        keys, refs = self._reference_texts(urls)
        if len(captions) != len(refs):
            raise VLPError(f"task {self.name}: captioned {len(captions)} of {len(refs)} samples")
        hyps = [captions[i] for i in range(len(refs))]
        metrics = caption_metrics(hyps, refs)
        details = {"examples": [{"key": k, "caption": h, "references": r}
                                for k, h, r in list(zip(keys, hyps, refs))[: self.examples]]}
        return metrics, details, len(hyps)


__all__ = ["Captioning", "caption_metrics", "coco_words", "normalised"]

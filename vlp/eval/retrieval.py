"""Image-text retrieval: recall@k both ways, by vlp.search's blockwise top-k, so memory stays bounded."""

from __future__ import annotations

import torch

from vlp.errors import VLPError
from vlp.eval.base import EvalRun, EvalTask
from vlp.search import MAX_SCORES, topk


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int | None = None,
    max_scores: int = MAX_SCORES,
) -> dict[str, float]:
    """Recall@k both ways.

    Args:
        image_emb: ``[N, E]`` normalised image embeddings.
        text_emb: ``[M, E]`` normalised text embeddings (several texts per image allowed).
        text_to_image: ``[M]`` index of each text's image.
        ks: the k of recall@k.
        chunk: rows scored at once; None = as many as keep a score block under
            ``max_scores`` elements (64 MB in fp32), so memory stays bounded for any N, M.

    image->text recall@k: share of images with at least one of their texts in the
    top k texts. text->image recall@k: share of texts whose image is in the top k.
    Equal scores rank by index, lower first (``vlp.search.topk``): a text tied with an
    image's own text counts as above it when its index is lower.
    """
    n, m = image_emb.shape[0], text_emb.shape[0]
    kmax = max(ks)

    def block(keys: int) -> int:
        return max_scores if chunk is None else chunk * max(keys, 1)

    _, top = topk(image_emb, text_emb, kmax, max_scores=block(m))  # [N, min(kmax, M)] text indices
    i2t = text_to_image[top] == torch.arange(n, device=top.device)[:, None]
    _, top = topk(text_emb, image_emb, kmax, max_scores=block(n))  # [M, min(kmax, N)] image indices
    t2i = top == text_to_image[:, None]
    i2t_hits = {k: int(i2t[:, :k].any(1).sum()) for k in ks}
    t2i_hits = {k: int(t2i[:, :k].any(1).sum()) for k in ks}
    out = {f"image_to_text_R@{k}": i2t_hits[k] / n for k in ks}
    out.update({f"text_to_image_R@{k}": t2i_hits[k] / m for k in ks})
    return out


class Retrieval(EvalTask):
    """Image-text retrieval, image->text and text->image.

    Args:
        shards: the eval set (path, brace / glob pattern, ``builtin:emoji/...``, ``a::b``).
        captions: the caption fields of a sample: a member (``txt``) or a json path
            (``labels.de``); a list-valued field gives several captions.
        name: the task's name in results (default: the task file's name).
        description: what the task measures.
        holdout: only the samples of ``shards`` this hold-out sets aside (vlp.eval.EvalTask).

    Metrics: ``image_to_text_R@{1,5,10}`` (an image's hit: any of its captions in the top k)
    and ``text_to_image_R@{1,5,10}``.
    """

    kind = "retrieval"
    headline = ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5")

    def __init__(self, shards: str, captions: str | list[str] = "txt", name: str | None = None,
                 description: str = "", holdout: float | dict | None = None,
                 embeddings: tuple[str, str] = ("image", "text")):
        super().__init__(shards, name, description, holdout, embeddings)
        self.captions = [captions] if isinstance(captions, str) else list(captions)
        if not self.captions:
            raise VLPError("captions is empty: give the caption fields, e.g. [txt]")

    def evaluate(self, run: EvalRun) -> tuple[dict[str, float], dict, int]:
        feats = run.features(self.shards, captions=self.captions, holdout=self.holdout)
        if len(feats.text) == 0:
            raise VLPError(f"task {self.name}: no captions found in fields {self.captions}")
        metrics = retrieval_metrics(feats.image, feats.text, feats.text_owner)
        return metrics, {"num_texts": len(feats.text)}, len(feats)

"""Image-text retrieval recall@k, computed in chunks so memory stays bounded."""

from __future__ import annotations

import torch


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int | None = None,
    max_scores: int = 2**24,
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
    """
    n, m = image_emb.shape[0], text_emb.shape[0]
    if chunk is None:
        chunk = max(1, max_scores // max(n, m, 1))
    kmax = max(ks)
    i2t_hits = {k: 0 for k in ks}
    for start in range(0, n, chunk):
        scores = image_emb[start : start + chunk] @ text_emb.T  # [c, M]
        top = scores.topk(min(kmax, m), dim=1).indices  # [c, k]
        hit = text_to_image[top] == torch.arange(start, start + scores.shape[0])[:, None]
        for k in ks:
            i2t_hits[k] += int(hit[:, :k].any(1).sum())
    t2i_hits = {k: 0 for k in ks}
    for start in range(0, m, chunk):
        scores = text_emb[start : start + chunk] @ image_emb.T  # [c, N]
        top = scores.topk(min(kmax, n), dim=1).indices
        hit = top == text_to_image[start : start + chunk, None]
        for k in ks:
            t2i_hits[k] += int(hit[:, :k].any(1).sum())
    out = {f"image_to_text_R@{k}": i2t_hits[k] / n for k in ks}
    out.update({f"text_to_image_R@{k}": t2i_hits[k] / m for k in ks})
    return out

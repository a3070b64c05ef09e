"""Exact similarity search in blocks: every query scored against every key, the Q x K score
matrix never held whole. Retrieval's recall@k (vlp.eval.retrieval) and `vlp overlap`'s nearest
training images and near-duplicate pairs (vlp.overlap) search with it.

A block holds at most ``max_scores`` scores: as many query rows as fit against all keys, or, when
one row of keys does not fit, one query row at a time against chunks of the keys, each chunk's
top k merged into the running top k. The search is exact and its order fixed: ``topk`` orders a
query's keys by score, highest first, and equal scores by key index, lowest first (as ``argmax``
and ``numpy.argmin`` pick the first), so ties are broken the same way whatever the block size
(torch.topk leaves the choice among equal values open). Integer scores (``matching_bits``) are the
same in any block; a float matrix product computed in blocks of another shape may round
differently in its last bit, as any BLAS call does.

A score function maps (queries ``[q, D]``, keys ``[c, D]``) to scores ``[q, c]``, higher =
nearer: ``dot`` for embeddings (cosine when they are L2-normalised), ``matching_bits`` for packed
binary hashes (64 x words minus the Hamming distance). Scores must not be NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

MAX_SCORES = 1 << 24  # scores held at once: 64 MB in fp32

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dot(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Dot products: ``[q, D]`` x ``[c, D]`` -> ``[q, c]``."""
    return queries @ keys.T


_POPCOUNT8 = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (any shape) -> uint8, same shape."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def matching_bits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Bits that agree between packed bit strings: CPU int64 ``[q, W]`` x ``[c, W]`` -> int16
    ``[q, c]``, ``64 W`` minus the Hamming distance (a similarity: the nearest scores highest).

    The XOR and popcount run in numpy (torch has no popcount; one table lookup per byte in torch
    would hold 8 int64 indices per pair), on the tensors' memory.
    """
    q, k = queries.numpy().view(np.uint64), keys.numpy().view(np.uint64)
    # word by word: numpy broadcasts [q, 1] ^ [1, c] far faster than [q, 1, W] ^ [1, c, W]
    agree = np.subtract(np.int16(64), popcount(q[:, None, 0] ^ k[None, :, 0]), dtype=np.int16)
    for w in range(1, q.shape[1]):
        agree += np.subtract(np.int16(64), popcount(q[:, None, w] ^ k[None, :, w]), dtype=np.int16)
    return torch.from_numpy(agree)


def _steps(n_queries: int, n_keys: int, max_scores: int) -> tuple[int, int]:
    """(query rows, keys) per block: all keys and as many rows as fit, or one row and a chunk."""
    if max_scores < 1:
        raise ValueError(f"max_scores must be >= 1, got {max_scores}")
    cols = max(1, min(n_keys, max_scores))
    return max(1, min(n_queries, max_scores // cols)), cols


def _in_order(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k of each row by (value descending, index ascending): ``[q, n]`` -> ``[q, k]``."""
    indices, perm = indices.sort(dim=1)
    values, perm2 = values.gather(1, perm).sort(dim=1, descending=True, stable=True)
    return values[:, :k], indices.gather(1, perm2)[:, :k]


def _block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of ``scores [q, c]`` (k <= c), equal scores by lower index."""
    if k == scores.shape[1]:
        values, indices = scores.topk(k, dim=1)
        return _in_order(values, indices, k)
    # one more than asked: where the (k+1)-th equals the k-th, a value equal to the k-th was left
    # out, and torch.topk's choice among the equals is unspecified; elsewhere it is the top k
    values, indices = scores.topk(k + 1, dim=1)
    values, indices, tied = values[:, :k], indices[:, :k], values[:, k] == values[:, k - 1]
    if tied.any():
        rows, kth = scores[tied], values[tied, k - 1:]
        # keep what is above the k-th; in place of the chosen equals, the lowest-indexed equals,
        # found by one nonzero (row-major: by row, then index) rather than a cumsum over the rows
        row, col = (rows == kth).nonzero(as_tuple=True)
        counts = torch.bincount(row, minlength=len(rows))
        first = torch.cumsum(counts, 0) - counts  # where each row's equals start in (row, col)
        chosen = values[tied] == kth  # [t, k]: the places of the equals torch.topk took
        needed = chosen.sum(1)
        rank = torch.arange(len(row), device=row.device) - first[row]  # place among its row's equals
        take = rank < needed[row]
        fixed = indices[tied]
        fixed[chosen] = col[take]  # both masks count `needed` per row, row by row
        indices[tied] = fixed
    return _in_order(values, indices, k)


@torch.no_grad()
def topk(queries: torch.Tensor, keys: torch.Tensor, k: int, score: Score = dot,
         max_scores: int = MAX_SCORES) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest-scoring keys of every query (exact; ties by lower key index).

    Args:
        queries: ``[Q, D]``.
        keys: ``[K, D]``.
        k: keys per query; ``k > K`` gives all K.
        score: ``(queries [q, D], keys [c, D]) -> [q, c]``, higher = nearer (``dot``, ``matching_bits``).
        max_scores: the most scores held in one block.

    Returns:
        scores ``[Q, min(k, K)]`` (each row descending, in ``score``'s dtype) and key indices
        ``[Q, min(k, K)]`` (int64).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n_q, n_k = len(queries), len(keys)
    k = min(k, n_k)
    if k == 0 or n_q == 0:
        none = score(queries[:0], keys[:0])  # [0, 0], for the dtype and device
        return none.new_empty(n_q, k), torch.empty(n_q, k, dtype=torch.long, device=none.device)
    rows, cols = _steps(n_q, n_k, max_scores)
    out_values, out_indices = [], []
    for r in range(0, n_q, rows):
        q = queries[r:r + rows]
        values = indices = None
        for c in range(0, n_k, cols):
            s = score(q, keys[c:c + cols])
            v, i = _block_topk(s, min(k, s.shape[1]))
            if values is None:
                values, indices = v, i + c
            else:  # merge with the top k of the earlier chunks
                values, indices = _in_order(torch.cat([values, v], 1), torch.cat([indices, i + c], 1), k)
        out_values.append(values)
        out_indices.append(indices)
    return torch.cat(out_values), torch.cat(out_indices)


@torch.no_grad()
def pairs_at_least(queries: torch.Tensor, keys: torch.Tensor, min_score: float, score: Score = dot,
                   max_scores: int = MAX_SCORES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (query, key) pair scoring at least ``min_score``, ordered by query then key.

    Args: as ``topk``; ``min_score`` in ``score``'s units.

    Returns:
        query indices ``[P]``, key indices ``[P]`` (int64) and their scores ``[P]``.
    """
    n_q, n_k = len(queries), len(keys)
    found = []
    if n_q and n_k:
        rows, cols = _steps(n_q, n_k, max_scores)
        for r in range(0, n_q, rows):
            for c in range(0, n_k, cols):
                s = score(queries[r:r + rows], keys[c:c + cols])
                i, j = torch.nonzero(s >= min_score, as_tuple=True)
                found.append((i + r, j + c, s[i, j]))
    if not found:
        none = score(queries[:0], keys[:0])
        empty = torch.zeros(0, dtype=torch.long, device=none.device)
        return empty, empty, none.flatten()
    # already in (query, key) order: a block is row-major, and keys are only chunked one query row at a time
    query_idx, key_idx, scores = (torch.cat(x) for x in zip(*found))
    return query_idx, key_idx, scores

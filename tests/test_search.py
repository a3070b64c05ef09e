"""vlp.search: the blockwise top-k and threshold search equal the whole score matrix searched at
once (torch.topk, a stable sort for the order of ties, torch.nonzero), whatever the block size,
with many ties, k > K and empty inputs; no block holds more than ``max_scores`` scores; the
Hamming form counts the bits that agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlp.search import dot, matching_bits, pairs_at_least, popcount, topk

# 1: one score per block (keys chunked one at a time); 7, 40: query rows of a few keys chunks or
# a few rows per block; 10**6: the whole matrix in one block
BLOCKS = [1, 7, 40, 10**6]


def _data(q: int, k: int, ties: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if ties:  # small integer vectors: many equal scores, and repeated keys
        keys = torch.randint(-1, 2, (k, 3), generator=g).float()
        return torch.randint(-1, 2, (q, 3), generator=g).float(), keys
    return torch.randn(q, 8, generator=g), torch.randn(k, 8, generator=g)


def _reference(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole matrix at once: values as torch.topk's, indices by a stable sort (ties: lower index)."""
    k = min(k, scores.shape[1])
    values = scores.topk(k, dim=1).values
    order = scores.sort(dim=1, descending=True, stable=True)
    assert torch.equal(order.values[:, :k], values)
    return values, order.indices[:, :k]


def _counting(score, sizes: list[int]):
    def counted(q, k):
        out = score(q, k)
        sizes.append(out.numel())
        return out
    return counted


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_scores", BLOCKS)
@pytest.mark.parametrize("k", [1, 5, 30, 45])
def test_topk_equals_the_whole_matrix_searched_at_once(ties, max_scores, k):
    queries, keys = _data(23, 30, ties)
    sizes = []
    values, indices = topk(queries, keys, k, score=_counting(dot, sizes), max_scores=max_scores)
    ref_values, ref_indices = _reference(queries @ keys.T, k)
    assert values.shape == indices.shape == (23, min(k, 30)) and indices.dtype == torch.long
    assert torch.equal(indices, ref_indices)
    if ties:  # small integers: every product exact, in any block
        assert torch.equal(values, ref_values)
    else:  # a product in a block of another shape may round differently in its last bit
        torch.testing.assert_close(values, ref_values, rtol=1e-6, atol=1e-6)
    assert max(sizes) <= max_scores  # the 23 x 30 matrix is never whole unless it fits


def test_ties_go_to_the_lower_index_whichever_block_holds_them():
    # every key scores the same: any k of them are a top k, the first k are the answer
    queries, keys = torch.ones(4, 2), torch.ones(50, 2)
    for max_scores in BLOCKS:
        values, indices = topk(queries, keys, 3, max_scores=max_scores)
        assert values.tolist() == [[2.0] * 3] * 4 and indices.tolist() == [[0, 1, 2]] * 4
    # a better key late, then ties: the better first, then the lowest-indexed of the equals
    keys[40] = 2.0
    assert topk(queries, keys, 3, max_scores=7)[1].tolist() == [[40, 0, 1]] * 4


def test_topk_of_nothing():
    queries, keys = _data(5, 6, ties=False)
    for q, k, kk, shape in [(queries, keys, 0, (5, 0)), (queries, keys[:0], 3, (5, 0)), (queries[:0], keys, 3, (0, 3))]:
        values, indices = topk(q, k, kk)
        assert values.shape == indices.shape == shape and values.dtype == torch.float32
    with pytest.raises(ValueError, match="k must be >= 0"):
        topk(queries, keys, -1)


@pytest.mark.parametrize("max_scores", BLOCKS)
def test_pairs_at_least_equals_the_whole_matrix_thresholded(max_scores):
    queries, keys = _data(23, 30, ties=True)
    sizes = []
    qi, ki, s = pairs_at_least(queries, keys, 1.0, score=_counting(dot, sizes), max_scores=max_scores)
    scores = queries @ keys.T
    ref_q, ref_k = torch.nonzero(scores >= 1.0, as_tuple=True)  # row-major: by query, then key
    assert torch.equal(qi, ref_q) and torch.equal(ki, ref_k) and torch.equal(s, scores[ref_q, ref_k])
    assert len(qi) > 50 and max(sizes) <= max_scores
    none = pairs_at_least(queries, keys, 100.0)
    assert [len(x) for x in none] == [0, 0, 0] and none[0].dtype == torch.long


def _hashes(n: int, words: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**64, (n, words), dtype=np.uint64, endpoint=False)


@pytest.mark.parametrize("words", [1, 2])
def test_matching_bits_is_64_per_word_minus_the_hamming_distance(words):
    a, b = _hashes(40, words, 0), _hashes(25, words, 1)
    b[3] = a[7]  # an exact copy: all bits agree
    b[4] = a[8]
    b[4, 0] ^= np.uint64(0b1011)  # 3 bits apart
    naive = np.array([[64 * words - sum((int(x) ^ int(y)).bit_count() for x, y in zip(ra, rb)) for rb in b]
                      for ra in a])
    agree = matching_bits(torch.from_numpy(a.view(np.int64)), torch.from_numpy(b.view(np.int64)))
    assert agree.dtype == torch.int16 and (agree.numpy() == naive).all()
    assert agree[7, 3] == 64 * words and agree[8, 4] == 64 * words - 3
    assert (popcount(a) == [[int(x).bit_count() for x in row] for row in a]).all()
    # the nearest by Hamming distance, ties to the lower index, in blocks as over the whole matrix
    for max_scores in BLOCKS:
        values, indices = topk(torch.from_numpy(a.view(np.int64)), torch.from_numpy(b.view(np.int64)), 4,
                               score=matching_bits, max_scores=max_scores)
        ref_values, ref_indices = _reference(torch.from_numpy(naive), 4)
        assert torch.equal(values.long(), ref_values) and torch.equal(indices, ref_indices)

"""BLEU (Papineni et al. 2002), as coco-caption's scorer computes it (pycocoevalcap
bleu/bleu_scorer.py with the "closest" reference length, which its ``Bleu`` uses).

Corpus BLEU-N = BP * (p_1 p_2 ... p_N)^(1/N). ``p_n``: the hypotheses' n-grams matched in their
references, each counted at most as often as it occurs in one reference (the most in any),
over all hypothesis n-grams, summed over the corpus before dividing. ``BP = exp(1 - r / c)``
when the total hypothesis length ``c`` is below the total effective reference length ``r``
(else 1); an image's effective reference length is the reference length closest to its
hypothesis's, the shortest of equally close ones (so the order of references does not matter).
As coco-caption does, ``p_n = (matched + 1e-15) / (total + 1e-9)`` (a zero precision gives a
tiny score rather than 0) and per-image scores use the same formula on one image.
Captions come as words (vlp.eval.ptb_tokenize.caption_words gives coco-caption's).
"""

from __future__ import annotations

import math
from collections import Counter

from vlp.eval.cider import ngram_counts

TINY = 1e-15  # coco-caption's smoothing of matches ...
SMALL = 1e-9  # ... and of totals (and lengths)


def _score(correct: list[int], guess: list[int], test_len: float, ref_len: float, max_n: int) -> float:
    """BLEU-``max_n`` from match counts, n-gram totals and lengths, in coco-caption's operations."""
    product = 1.0
    for n in range(max_n):
        product *= float(correct[n] + TINY) / (guess[n] + SMALL)
    score = product ** (1.0 / max_n)
    ratio = (test_len + TINY) / (ref_len + SMALL)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def bleu(hypotheses: list[list[str]], references: list[list[list[str]]], max_n: int = 4) -> tuple[float, list[float]]:
    """``(corpus BLEU-max_n, per-image BLEU-max_n)`` of one hypothesis and its references per
    image, each caption a list of words."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
    if any(not rs for rs in references):
        raise ValueError("every image needs at least one reference")
    totals = {"correct": [0] * max_n, "guess": [0] * max_n, "test": 0, "ref": 0}
    per_image = []
    for hyp, rs in zip(hypotheses, references):
        most: Counter = Counter()
        for r in rs:
            most |= ngram_counts(r, max_n)  # per n-gram, its largest count in one reference
        correct = [0] * max_n
        for g, count in ngram_counts(hyp, max_n).items():
            correct[len(g) - 1] += min(most[g], count)
        guess = [max(0, len(hyp) - n) for n in range(max_n)]
        ref_len = min((abs(len(r) - len(hyp)), len(r)) for r in rs)[1]  # closest, then shortest
        per_image.append(_score(correct, guess, len(hyp), ref_len, max_n))
        for n in range(max_n):
            totals["correct"][n] += correct[n]
            totals["guess"][n] += guess[n]
        totals["test"] += len(hyp)
        totals["ref"] += ref_len
    if not hypotheses:
        return 0.0, []
    return _score(totals["correct"], totals["guess"], totals["test"], totals["ref"], max_n), per_image

"""CIDEr-D (Vedantam et al. 2015), as coco-caption's scorer computes it (pycocoevalcap
cider/cider_scorer.py, the one ``Cider`` runs: the clipped, length-penalised "-D" form).

For n = 1..4, every caption becomes a vector of its n-gram counts weighted by
``log(N) - log(max(1, df))`` (``N`` images; ``df`` the number of images whose references
contain the n-gram; document frequencies come from the references only). An image's score is

    10 * mean_n mean_refs  sum_g min(h_g, r_g) r_g / (|h| |r|) * e^(-(len_h - len_r)^2 / (2 * 6^2))

(the "-D": weights of the hypothesis clipped by the reference's, a Gaussian penalty on the
length difference in words); the corpus score is the mean over images. Captions come as words
(vlp.eval.ptb_tokenize.caption_words gives coco-caption's); logs, sums and means are taken as
coco-caption takes them, in its order, so that the scores equal its scores to the last bit.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

SIGMA = 6.0
MAX_N = 4


def ngram_counts(words: list[str], n_max: int = MAX_N) -> Counter:
    """Counts of the 1- to ``n_max``-grams of ``words``, shortest first, each order in text order."""
    if isinstance(words, str):
        raise TypeError(f"expected a caption's words, got the string {words!r} (split it into words first)")
    return Counter(tuple(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1))


def cider_d(hypotheses: list[list[str]], references: list[list[list[str]]]) -> tuple[float, list[float]]:
    """``(corpus CIDEr-D, per-image scores)`` of one hypothesis and its references per image,
    each caption a list of words."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
    if any(not rs for rs in references):
        raise ValueError("every image needs at least one reference")
    if not hypotheses:
        return 0.0, []
    refs = [[ngram_counts(r) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for g in r})
    # numpy's log, as coco-caption takes it (it can differ from math.log in the last bit)
    log_n = float(np.log(float(len(hypotheses))))
    log_df = {d: float(np.log(max(1.0, d))) for d in set(df.values()) | {0}}

    def vector(counts: Counter, length: int) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(MAX_N)]
        squares = [0.0] * MAX_N
        for g, tf in counts.items():
            v = vec[len(g) - 1][g] = float(tf) * (log_n - log_df[df.get(g, 0)])
            squares[len(g) - 1] += v * v
        return vec, [math.sqrt(s) for s in squares], length

    scores = []
    for hyp, rs, raw_refs in zip(hypotheses, refs, references):
        h_vec, h_norm, h_len = vector(ngram_counts(hyp), len(hyp))
        total = [0.0] * MAX_N
        for r, r_words in zip(rs, raw_refs):
            r_vec, r_norm, r_len = vector(r, len(r_words))
            # lengths in words (coco-caption's count bigrams: the same difference wherever both
            # captions have a word, and the score is 0 where one has none); e ** x as it writes
            # it, which can differ from exp(x) in the last bit
            penalty = math.e ** (-(float(h_len - r_len) ** 2) / (2 * SIGMA**2))
            for n in range(MAX_N):
                val = sum(min(v, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, v in h_vec[n].items())
                if h_norm[n] != 0 and r_norm[n] != 0:
                    val /= h_norm[n] * r_norm[n]
                total[n] += val * penalty
        # np.mean as coco-caption's (numpy adds in its own order)
        scores.append(float(np.mean(np.array(total))) / len(rs) * 10.0)
    return float(np.mean(np.array(scores))), scores

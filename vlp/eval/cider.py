"""CIDEr-D (Vedantam et al. 2015), as coco-caption's ``CiderD`` scorer computes it.

For n = 1..4, every caption becomes a vector of its n-gram counts weighted by
``log(N) - log(max(1, df))`` (``N`` images; ``df`` the number of images whose references
contain the n-gram; document frequencies come from the references only). An image's score is

    10 * mean_n mean_refs  sum_g min(h_g, r_g) r_g / (|h| |r|) * exp(-(len_h - len_r)^2 / (2 * 6^2))

(the "-D": counts of the hypothesis clipped by the reference's, a Gaussian penalty on the
length difference in words); the corpus score is the mean over images. Text is lowercased and
split into word tokens (coco-caption uses the PTB tokenizer, which also drops punctuation).
"""

from __future__ import annotations

import math
import re
from collections import Counter

SIGMA = 6.0
MAX_N = 4


def words(text: str) -> list[str]:
    """Lowercased word tokens, punctuation dropped."""
    return re.findall(r"\w+(?:'\w+)?", text.lower())


def _ngrams(tokens: list[str], n_max: int = MAX_N) -> list[Counter]:
    return [Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)) for n in range(1, n_max + 1)]


def cider_d(hypotheses: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
    """``(corpus CIDEr-D, per-image scores)`` of one hypothesis and its references per image."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
    if not hypotheses:
        return 0.0, []
    refs = [[_ngrams(words(r)) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for counts in r for g in counts})
    log_n = math.log(len(hypotheses))

    def vector(grams: list[Counter]) -> tuple[list[dict], list[float], int]:
        vec = [{g: c * (log_n - math.log(max(1.0, df[g]))) for g, c in counts.items()} for counts in grams]
        norms = [math.sqrt(sum(v * v for v in d.values())) for d in vec]
        return vec, norms, sum(grams[0].values())

    scores = []
    for hyp, rs in zip(hypotheses, refs):
        h_vec, h_norm, h_len = vector(_ngrams(words(hyp)))
        total = [0.0] * MAX_N
        for r in rs:
            r_vec, r_norm, r_len = vector(r)
            penalty = math.exp(-((h_len - r_len) ** 2) / (2 * SIGMA**2))
            for n in range(MAX_N):
                if h_norm[n] and r_norm[n]:
                    dot = sum(min(v, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, v in h_vec[n].items())
                    total[n] += dot / (h_norm[n] * r_norm[n]) * penalty
        scores.append(10.0 * sum(total) / MAX_N / max(len(rs), 1))
    return sum(scores) / len(scores), scores

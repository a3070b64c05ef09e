"""BLEU against hand-computed values and against coco-caption's scorer."""

import math

import pytest

from tests.eval.coco_caption import coco_scores, corpus
from vlp.eval.bleu import bleu
from vlp.eval.captioning import coco_words


def w(*captions):
    return [c.split() for c in captions]


def test_bleu_by_hand():
    # "a a b c d" against "a b c d" and "a a x": counts clipped by the most in one reference
    # (a: 2, from the second): p1 = 5/5, p2 = 4/4 (aa ab bc cd), p3 = 2/3 (abc bcd), p4 = 1/2 (abcd);
    # reference lengths 4 and 3, hypothesis 5: no brevity penalty
    score, per_image = bleu(w("a a b c d"), [w("a b c d", "a a x")])
    assert score == pytest.approx((2 / 3 * 1 / 2) ** 0.25, rel=1e-8) and per_image == [score]
    # 4 words against 6 and 8: the closest (6) is the effective length, BP = exp(1 - 6/4)
    score, _ = bleu(w("a b c d"), [w("a b c d e f", "a b c d e f g h")])
    assert score == pytest.approx(math.exp(1 - 6 / 4), rel=1e-8)
    # no 4-gram in a 3-word hypothesis: coco-caption's smoothing, (0 + 1e-15) / (0 + 1e-9) = 1e-6,
    # gives about (1 * 1 * 1 * 1e-6) ** (1/4), not 0; the matched orders and the length ratio are
    # smoothed too (equal lengths: (3 + 1e-15) / (3 + 1e-9) < 1, a brevity penalty a hair below 1)
    score, _ = bleu(w("a b c"), [w("a b c")])
    p = (3 + 1e-15) / (3 + 1e-9) * (2 + 1e-15) / (2 + 1e-9) * (1 + 1e-15) / (1 + 1e-9) * 1e-15 / 1e-9
    assert score == pytest.approx(p ** 0.25 * math.exp(1 - (3 + 1e-9) / (3 + 1e-15)), rel=1e-12)
    assert score == pytest.approx(1e-6 ** 0.25, rel=1e-8)
    with pytest.raises(ValueError):
        bleu(w("a"), [])
    with pytest.raises(TypeError):
        bleu(["a b"], [["a b"]])  # captions are lists of words


def test_bleu_takes_the_shorter_of_equally_close_reference_lengths():
    # 5 words against 6 and 4: both 1 away, so 4 (no penalty), whichever comes first
    for refs in (w("a b c d e f", "a b c d"), w("a b c d", "a b c d e f")):
        score, _ = bleu(w("a b c d e"), [refs])
        assert score == pytest.approx(1.0, abs=1e-9)


def test_bleu_equals_coco_caption_scorer():
    hyp_words, ref_words = coco_words(*corpus())
    expected, expected_per_image = coco_scores(hyp_words, ref_words)["bleu4"]
    score, per_image = bleu(hyp_words, ref_words)
    assert score == expected
    assert per_image == expected_per_image

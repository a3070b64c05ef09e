"""CIDEr-D against hand-computed values and against coco-caption's scorer."""

import math

import pytest

from tests.eval.coco_caption import coco_scores, corpus
from vlp.eval.captioning import coco_words
from vlp.eval.cider import cider_d


def w(*captions):
    return [c.split() for c in captions]


def test_cider_d_by_hand():
    # two images, one reference each; document frequencies 1, log N = log 2
    refs = [w("a b"), w("c d")]
    score, per_image = cider_d(w("a b", "c"), refs)
    # image 1: the reference itself; unigram and bigram cosines 1, no 3- and 4-grams: 10 * (1 + 1) / 4
    assert per_image[0] == pytest.approx(5.0)
    # image 2: "c" vs "c d": unigram cosine (log2 * log2) / (log2 * sqrt(2) log2) = 1/sqrt(2),
    # length gap 1 -> exp(-1 / 72); no bigram in the hypothesis
    assert per_image[1] == pytest.approx(10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4)
    assert score == pytest.approx(sum(per_image) / 2)


def test_cider_d_clips_repeats_averages_references_and_ignores_shared_ngrams():
    refs = [w("a b c d e"), w("f g h i j")]
    exact, _ = cider_d(w("a b c d e", "f g h i j"), refs)
    assert exact == pytest.approx(10.0)  # every order present: all four cosines 1
    # repeating a matched word does not raise its credit above the reference's count: "a" x 5
    # (weight 5 log 2, norm 5 log 2) against "a b c d e" (weights log 2, norm sqrt(5) log 2) earns
    # min(5, 1) log^2 2 / (5 sqrt(5) log^2 2) at n = 1 (unclipped: 1 / sqrt(5)), no bigram matches
    _, rep = cider_d(w("a a a a a", "f g h i j"), refs)
    assert rep[0] == pytest.approx(10 * (1 / (5 * math.sqrt(5))) / 4, rel=1e-12)
    # "a x y z w": unseen words weigh log 2 too (df 0 counts as 1): unigram cosine 1/5
    _, once = cider_d(w("a x y z w", "f g h i j"), refs)
    assert once[0] == pytest.approx(10 * (1 / 5) / 4, rel=1e-12)
    # a word in every image's references has idf log(2/2) = 0 and earns nothing
    _, shared = cider_d(w("the", "x"), [w("the cat"), w("the dog")])
    assert shared[0] == 0.0
    # the score is the mean over the references: 5 against "a b" (as above), 0 against "z z"
    _, two = cider_d(w("a b", "c d"), [w("a b", "z z"), w("c d")])
    _, one = cider_d(w("a b", "c d"), [w("a b"), w("c d")])
    assert two == pytest.approx([2.5, 5.0], rel=1e-12) and one == pytest.approx([5.0, 5.0], rel=1e-12)
    with pytest.raises(ValueError):
        cider_d(w("a"), [])
    with pytest.raises(TypeError):
        cider_d(["a b"], [["a b"]])  # captions are lists of words


def test_cider_d_equals_coco_caption_scorer():
    hyp_words, ref_words = coco_words(*corpus())
    expected, expected_per_image = coco_scores(hyp_words, ref_words)["cider"]
    score, per_image = cider_d(hyp_words, ref_words)
    assert score == expected  # to the last bit: the same operations in the same order
    assert per_image == expected_per_image

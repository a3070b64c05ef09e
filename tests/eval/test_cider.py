"""CIDEr-D against hand-computed values, and the captioning metrics."""

import math

import pytest

from vlp.eval.captioning import caption_metrics, normalised
from vlp.eval.cider import cider_d, words


def test_cider_d_by_hand():
    # two images, one reference each; document frequencies 1, log N = log 2
    refs = [["a b"], ["c d"]]
    score, per_image = cider_d(["a b", "c"], refs)
    # image 1: the reference itself; unigram and bigram cosines 1, no 3- and 4-grams: 10 * (1 + 1) / 4
    assert per_image[0] == pytest.approx(5.0)
    # image 2: "c" vs "c d": unigram cosine (log2 * log2) / (log2 * sqrt(2) log2) = 1/sqrt(2),
    # length gap 1 -> exp(-1 / 72); no bigram in the hypothesis
    assert per_image[1] == pytest.approx(10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4)
    assert score == pytest.approx(sum(per_image) / 2)


def test_cider_d_clips_repeats_averages_references_and_ignores_shared_ngrams():
    refs = [["a b c d e"], ["f g h i j"]]
    exact, _ = cider_d(["a b c d e", "f g h i j"], refs)
    assert exact == pytest.approx(10.0)  # every order present: all four cosines 1
    # repeating a matched word does not raise its credit above the reference's count
    _, rep = cider_d(["a a a a a", "f g h i j"], refs)
    _, once = cider_d(["a x y z w", "f g h i j"], refs)
    assert rep[0] < once[0]  # unclipped, five matches would score more than one
    # a word in every image's references has idf log(2/2) = 0 and earns nothing
    _, shared = cider_d(["the", "x"], [["the cat"], ["the dog"]])
    assert shared[0] == 0.0
    # the score is the mean over the references
    _, two = cider_d(["a b", "c d"], [["a b", "z z"], ["c d"]])
    _, one = cider_d(["a b", "c d"], [["a b"], ["c d"]])
    assert two[0] < one[0]
    with pytest.raises(ValueError):
        cider_d(["a"], [])


def test_caption_metrics():
    assert words("Flag: United States!") == ["flag", "united", "states"]
    assert normalised("  Grinning   FACE ") == "grinning face"
    m = caption_metrics(["grinning face", "cat"], [["Grinning Face"], ["dog face", "cat face"]])
    assert m["exact_match"] == 0.5
    assert 0 < m["cider"] and 0 <= m["bleu4"] < 1
    perfect = caption_metrics(["one two three four", "five six seven eight"],
                              [["one two three four"], ["five six seven eight"]])
    assert perfect == {"cider": pytest.approx(10.0), "bleu4": pytest.approx(1.0), "exact_match": 1.0}

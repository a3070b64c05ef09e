"""The captioning metrics: CIDEr-D and BLEU-4 as coco-caption (pycocoevalcap) computes them from
raw captions, and exact match."""

import pytest

from tests.eval.coco_caption import coco_scores, corpus, java_ptb_words
from vlp.eval.captioning import caption_metrics, normalised


def test_caption_metrics():
    """The three metrics by hand on two images, after PTB words (lowercased): CIDEr-D 2.5 + 0.625 e^(-1/72),
    BLEU-4 with coco-caption's smoothing and brevity penalty, one exact match of two."""
    import math

    assert normalised("  Grinning   FACE ") == "grinning face"
    m = caption_metrics(["grinning face", "cat"], [["Grinning Face"], ["dog face", "cat face"]])
    assert m["exact_match"] == 0.5
    # CIDEr-D: N = 2 images; "face" is in both reference sets (idf 0), every other n-gram in one
    # (idf log 2). Image 1 equals its reference: unigram and bigram cosines 1, no 3- or 4-grams:
    # 10 * (1 + 1 + 0 + 0) / 4 = 5. Image 2, "cat": against "dog face" 0; against "cat face" a
    # unigram cosine 1 with the length penalty e^(-1/72), no bigram: 10 * e^(-1/72) / 4, averaged
    # over its two references. The corpus score is the mean of the two images.
    assert m["cider"] == pytest.approx((5.0 + 10 * math.exp(-1 / 72) / 4 / 2) / 2, rel=1e-12)
    # BLEU-4: 3 hypothesis words, all matched; 1 bigram, matched; no 3- or 4-grams: coco-caption's
    # (0 + 1e-15) / (0 + 1e-9); closest reference lengths 2 + 2 = 4 > 3: BP = exp(1 - 4/3)
    p = (3 + 1e-15) / (3 + 1e-9) * (1 + 1e-15) / (1 + 1e-9) * (1e-15 / 1e-9) ** 2
    assert m["bleu4"] == pytest.approx(p ** 0.25 * math.exp(1 - (4 + 1e-9) / (3 + 1e-15)), rel=1e-12)
    perfect = caption_metrics(["one two three four", "five six seven eight"],
                              [["one two three four"], ["five six seven eight"]])
    assert perfect == {"cider": pytest.approx(10.0), "bleu4": pytest.approx(1.0), "exact_match": 1.0}


def test_bleu4_takes_the_shorter_of_equally_close_reference_lengths_in_any_order():
    # 5 words against references of 6 and 4: both 1 away, the shorter (4) is the effective length,
    # so no brevity penalty (taking 6 would give exp(1 - 6/5)); every n-gram is matched
    for refs in (["a b c d e f", "a b c d"], ["a b c d", "a b c d e f"]):
        assert caption_metrics(["a b c d e"], [refs])["bleu4"] == pytest.approx(1.0, abs=1e-9)


def test_caption_metrics_equal_coco_caption_on_raw_captions(tmp_path):
    """Raw captions in, the scores pycocoevalcap's Bleu(4) and Cider give after its PTBTokenizer."""
    hyps, refs = corpus()
    # as COCOEvalCap: the references tokenised as one text, the hypotheses as another
    (tmp_path / "gts").mkdir()
    (tmp_path / "res").mkdir()
    it = iter(java_ptb_words([r for rs in refs for r in rs], tmp_path / "gts"))
    ref_words = [[next(it) for _ in rs] for rs in refs]
    expected = coco_scores(java_ptb_words(hyps, tmp_path / "res"), ref_words)
    metrics = caption_metrics(hyps, refs)
    assert metrics["bleu4"] == expected["bleu4"][0]  # to the last bit
    assert metrics["cider"] == expected["cider"][0]
    assert 0.05 < metrics["bleu4"] < 0.95 and 0.1 < metrics["cider"]  # a corpus that discriminates

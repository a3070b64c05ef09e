"""The captioning metrics: CIDEr-D and BLEU-4 as coco-caption (pycocoevalcap) computes them from
raw captions, and exact match."""

import pytest

from tests.eval.coco_caption import coco_scores, corpus, java_ptb_words
from vlp.eval.captioning import caption_metrics, normalised


def test_caption_metrics():
    assert normalised("  Grinning   FACE ") == "grinning face"
    m = caption_metrics(["grinning face", "cat"], [["Grinning Face"], ["dog face", "cat face"]])
    assert m["exact_match"] == 0.5
    assert 0 < m["cider"] and 0 <= m["bleu4"] < 1
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

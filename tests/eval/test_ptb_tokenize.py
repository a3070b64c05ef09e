"""coco-caption's PTB tokenisation in Python, against examples and against the Java tokenizer."""

import pytest

from tests.eval.coco_caption import corpus, java_ptb_words
from vlp.eval.ptb_tokenize import caption_words, words

# (caption, words as coco-caption scores them), read off Stanford CoreNLP 3.4.1's PTBTokenizer
BY_HAND = [
    ("A man's well-known dog, running 3.5 miles.",
     ["a", "man", "'s", "well-known", "dog", "running", "3.5", "miles"]),
    ("The colour (red) [blue] {green} & co. -- yes - no ... ok; fine: done?",
     ["the", "colour", "-lrb-", "red", "-rrb-", "-lsb-", "blue", "-rsb-", "-lcb-", "green", "-rcb-", "&", "co.",
      "yes", "no", "ok", "fine", "done"]),
    ("Don't can't won't cannot gonna I'd", ["do", "n't", "ca", "n't", "wo", "n't", "can", "not", "gon", "na", "i", "'d"]),
    ("$5.00 5% 1,000 1/2 3:45 -3 .5", ["$", "5.00", "5", "%", "1,000", "1/2", "3:45", "-3", ".5"]),
    ("children's boys' dogs., 2.5-inch", ["children", "'s", "boys", "dogs.", "2.5-inch"]),
    ("\"Hello,\" he said 'quietly'.", ["hello", "he", "said", "quietly"]),
    ("5 1/2 inches", ["5", "1/2", "inches"]),  # one token with a non-breaking space: two words
    ("A dog \U0001F600 on a mat", ["a", "dog", "on", "a", "mat"]),
    ("Flag: United States!", ["flag", "united", "states"]),
    ("Mr. Smith at the U.S. border, etc.", ["mr.", "smith", "at", "the", "u.s.", "border", "etc."]),
]


@pytest.mark.parametrize("caption, expected", BY_HAND)
def test_words_by_hand(caption, expected):
    assert words(caption) == expected


def test_captions_are_lexed_as_lines_of_one_text():
    # an acronym before a line that opens with "The" ends a sentence, as in the Java lexer
    assert caption_words(["a photo of vitamin C.", "The end"]) == [["a", "photo", "of", "vitamin", "c"],
                                                                   ["the", "end"]]
    assert caption_words(["a photo of vitamin C.", "the end"])[0][-1] == "c."
    assert caption_words(["a\nb", "c"]) == [["a", "b"], ["c"]]  # coco-caption joins a caption's lines


TRICKY = [
    "O'Neil's rock'n'roll y'all 'em '90s o'clock ma'am d'Avignon don'ts ain't 'tis 'twas",
    "Vitamin C. The end. I. The end. Fig. 5 fig. Pty. Ltd. So. Africa No. Korea etc. The Inc. said",
    "photo.jpg 5D.c. mid-1990sD.C. 1/2D.C. 2.5-3.5 10/12/2020 (650) 555-1234 12:55:00 1:2:3 -5.5",
    "<b>bold</b> <a href=\"x\"> <3 << >> :) ;-) :P =) ^_^ (>_<) c++ C# AT&T S&P-500 R&D a&b &amp; &quot;hi&quot;",
    "http://a.b/c?d=e www.x.org google.com a@b.com @user #tag #1 US$5 £5 €5 ¢ ¥ ½ ¼ ⅔ ° × © ™ § ² ₂",
    "“smart” ‘single’ «angle» ‹a› „low‚ ``tex'' '' `` ` ' — – ― - -- --- ----- ... .... …… . . .",
    "naïve CAFÉ ǅ ΣΟΦΟΣ İstanbul Straße 日本語 soft\u00adhyphen zero\u200bwidth tab\tnbsp\u00a0end",
]


def test_caption_words_equal_coco_caption_tokenizer(tmp_path):
    hyps, refs = corpus()
    captions = TRICKY + hyps + [r for rs in refs for r in rs]
    expected = java_ptb_words(captions, tmp_path)
    ours = caption_words(captions)
    mismatches = [(c, e, o) for c, e, o in zip(captions, expected, ours) if e != o]
    assert not mismatches, mismatches[:5]

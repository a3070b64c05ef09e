"""The built-in CLIP tokenizer: ids identical to open_clip's ``tokenize`` on a corpus of over 2,000
strings (web-like captions, unicode, emoji, CJK, HTML entities, special-token strings, empty and
over-long texts), and what the towers need to know of it."""

import random

import pytest
import torch

from vlp.data.clip_tokenizer import ClipTokenizer

WORDS = ["a", "photo", "of", "the", "cat", "dog's", "don't", "I'll", "New York", "2024", "3.14", "e-mail",
         "HTTP://x.com/a?b=c", "#tag", "@user", "café", "naïve", "Ünïcödé", "日本語のテキスト", "中文字符", "한국어",
         "Привет", "مرحبا", "😀", "👍🏽", "🇯🇵", "&amp;", "&lt;b&gt;", "&#39;", "&amp;amp;", "<start_of_text>",
         "<END_OF_TEXT>", "\t", "\n", "  ", "...", "!!!", "—", "“quoted”", "l’été", "ﬁ", "Ⅻ", "x²", "½", "\u200b",
         "\u00a0", "Ａｂｃ", "ß", "İstanbul", "ǅ"]


def corpus(n: int = 2100) -> list[str]:
    """Captions of 0 to 120 words (every tenth long enough to be cut at 77 tokens), joined with
    spaces or glued together (so punctuation runs swallow special-token strings, as on the web)."""
    rng = random.Random(0)
    texts = ["", " ", "!", "a", "A photo of a cat."]
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 40 if i % 10 else 120))]
        texts.append(" ".join(words) if i % 3 else "".join(words))
    return texts


def test_ids_are_open_clip_s_on_a_web_like_corpus():
    open_clip = pytest.importorskip("open_clip")
    texts = corpus()
    ref = open_clip.tokenize(texts, context_length=77)
    got = ClipTokenizer(77)(texts)
    bad = [t for t, r, g in zip(texts, ref, got) if not torch.equal(r, g)]
    assert not bad, bad[:3]
    assert len(texts) >= 2000 and (got[:, -1] == 49407).sum() > 100  # many cut, the end token kept last


def test_the_spec_framing_truncation_and_decoding():
    tok = ClipTokenizer(8)
    assert (tok.spec.vocab_size, tok.spec.pad_id, tok.spec.bos_id, tok.spec.eos_id) == (49408, 0, 49406, 49407)
    ids = tok(["", "a photo of a cat", "one two three four five six seven eight nine"])
    assert ids[0].tolist() == [49406, 49407, 0, 0, 0, 0, 0, 0]
    assert ids[1, 0] == 49406 and ids[1, 6] == 49407 and ids[1, 7] == 0
    assert ids[2, 0] == 49406 and ids[2, -1] == 49407 and (ids[2] != 0).all()
    assert tok.decode(ids[1:]) == ["a photo of a cat", "one two three four five six"]
    assert tok.decode(tok(["Café &amp; NAÏVE  text"])) == ["café & naïve text"]  # cleaned as open_clip cleans

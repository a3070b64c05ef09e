"""The reference for the caption metrics: the pycocoevalcap package (coco-caption's scorers and its
PTB tokenisation through Stanford CoreNLP 3.4.1 in Java), and a deterministic corpus to score.

Only tests import this module; ``vlp`` never imports pycocoevalcap.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
from pathlib import Path

import pytest


def java_ptb_words(captions: list[str], workdir: Path) -> list[list[str]]:
    """Each caption's words as coco-caption scores them: pycocoevalcap's own
    ``PTBTokenizer.tokenize`` (Stanford CoreNLP 3.4.1 in Java, then its punctuation filter), split
    on whitespace as its scorers split. The captions go in as one text, one per line, in order.

    It writes its sentences file beside its module, so it runs from a copy of the module in
    ``workdir`` (with a link to the jar) rather than in the installed package.
    """
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.tokenizer import ptbtokenizer

    if shutil.which("java") is None:
        pytest.skip("java is not installed (coco-caption's tokenizer is Stanford CoreNLP's PTBTokenizer)")
    installed = Path(ptbtokenizer.__file__).parent
    shutil.copy(installed / "ptbtokenizer.py", workdir / "ptbtokenizer.py")
    (workdir / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR).symlink_to(installed / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    spec = importlib.util.spec_from_file_location("coco_ptbtokenizer", workdir / "ptbtokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenized = module.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    return [tokenized[i][0].split() for i in range(len(captions))]


def coco_scores(hyp_words: list[list[str]], ref_words: list[list[list[str]]]) -> dict[str, tuple]:
    """``{"bleu4": (corpus, per image), "cider": (corpus, per image)}`` from pycocoevalcap's Bleu(4)
    and Cider scorers on tokenised captions (space-joined, as PTBTokenizer.tokenize returns them)."""
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res = {i: [" ".join(h)] for i, h in enumerate(hyp_words)}
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(ref_words)}
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per_image = Cider().compute_score(gts, res)
    return {"bleu4": (bleu[3], list(bleu_per_image[3])), "cider": (float(cider), [float(s) for s in cider_per_image])}


# Fragments of captions: what PTB tokenisation treats specially (hyphens, decimals, possessives,
# contractions, abbreviations, quotes, brackets, dashes, symbols) beside plain words.
NOUNS = ["man", "woman", "dog", "cat", "skateboard", "street", "table", "pizza", "train", "bus", "kite",
         "giraffe", "laptop", "bench", "umbrella", "horse", "boat", "clock", "bed", "kitchen", "children",
         "boys", "James", "Jones", "O'Neil", "t-shirt", "hot-dog", "x-ray", "teddy-bear", "U.S.", "T.V."]
WORDS = ["a", "the", "two", "three", "of", "on", "in", "with", "next", "to", "is", "are", "sitting",
         "riding", "holding", "standing", "red", "large", "small", "white", "old", "young", "colour",
         "black-and-white", "well-known", "two-story", "double-decker", "self-driving", "4-year-old",
         "1.5-inch", "mid-1990s", "and/or", "it's", "don't", "can't", "isn't", "they're", "we'll",
         "cannot", "gonna", "o'clock", "Mr.", "Dr.", "St.", "etc.", "vs."]
NUMBERS = ["3.5", "0.75", "1,000", "12:30", "2.0", "10", ".5", "-3", "1/2", "$5", "5%", "3-4", "1990s", "#1"]
PUNCT = [",", ".", "!", "?", ";", ":", "...", "!!", "?!"]
SEPARATE = ["-", "--", "—", "–", "&", "/", "*", "+", "=", "@", "...", "(", ")", "[", "]", "{", "}"]


def _word(rng: random.Random) -> str:
    pool = rng.choice([NOUNS, NOUNS, WORDS, WORDS, WORDS, NUMBERS])
    w = rng.choice(pool)
    if pool is NOUNS and rng.random() < 0.25:
        w += rng.choice(["'s", "'", "s", "’s"])
    case = rng.random()
    return w.capitalize() if case < 0.15 else w.upper() if case < 0.2 else w


def _caption(scene: list[str], rng: random.Random, length: int) -> str:
    """A noisy copy of ``scene`` (shared n-grams with the other captions of the image), decorated."""
    words = [w if rng.random() < 0.8 else _word(rng) for w in scene[:length]]
    parts = []
    for w in words:
        r = rng.random()
        if r < 0.08:
            w = rng.choice(['"', "'", "“", "‘", "("]) + w + rng.choice(['"', "'", "”", "’", ")"])
        elif r < 0.2:
            w += rng.choice(PUNCT)
        elif r < 0.26:
            w = rng.choice(SEPARATE) + " " + w
        parts.append(w)
    text = " ".join(parts)
    if rng.random() < 0.5:
        text = text[:1].upper() + text[1:] + rng.choice([".", " .", "", "!", "..."])
    return text


def corpus(images: int = 300, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``(hypotheses, references)``: one hypothesis and five references per image, shorter
    hypotheses than references (so BLEU's brevity penalty applies), and every third image with
    plain-word captions whose references are equally close in length above and below the
    hypothesis, in either order (where coco-caption's "closest" rule takes the shorter)."""
    rng = random.Random(seed)
    hyps, refs = [], []
    for i in range(images):
        scene = [_word(rng) for _ in range(16)]
        if i % 3 == 0:
            # one token per word: letters only, and not the words PTB splits in two
            plain = [w for w in scene if w.isalpha() and w.lower() not in ("cannot", "gonna")]
            plain += "a cat sat on the mat by the door of an old red house today".split()
            n = rng.randint(4, 7)
            d = rng.randint(1, 3)
            lengths = [n + d, n - d] if rng.random() < 0.5 else [n - d, n + d]
            lengths += [n + d + rng.randint(1, 3) for _ in range(3)]
            hyps.append(" ".join(plain[:n]))
            refs.append([" ".join(plain[:k]) for k in lengths])
        else:
            hyps.append(_caption(scene, rng, rng.randint(3, 9)))
            refs.append([_caption(scene, rng, rng.randint(6, 16)) for _ in range(5)])
    return hyps, refs

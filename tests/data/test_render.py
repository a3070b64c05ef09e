"""TextRenderer (CLIPPO's rendered text): big_vision's layout, the shipped Unifont, normalisation."""

import gzip
import json
import pickle
import tarfile
import unicodedata

import numpy as np
import pytest
import torch
from PIL import Image

from vlp.data.render import TextRenderer, UnifontHex, font_files, missing_glyph
from vlp.data.shards import builtin_root
from vlp.data.transforms import image_transform
from vlp.errors import VLPError

LANGUAGES = ("en", "zh", "ja", "ko", "de", "fr", "es", "ru", "hi")


def hex_glyph(cp: int) -> np.ndarray:
    """The glyph of ``cp`` read straight from the shipped .hex.gz text, ``[16, 8|16]`` of 0/1."""
    key = f"{cp:04X}:"
    for path in font_files():
        with gzip.open(path, "rt") as f:
            for line in f:
                if line.startswith(key):
                    bits = line.strip().split(":")[1]
                    rows = [bin(int(bits[i : i + len(bits) // 16], 16))[2:].zfill(len(bits) // 4)
                            for i in range(0, len(bits), len(bits) // 16)]
                    return np.array([[int(b) for b in r] for r in rows])
    raise KeyError(cp)


def ink(renderer: TextRenderer, text: str) -> np.ndarray:
    """Boolean ``[H, W]``: where the rendered text has the foreground level."""
    return renderer.pixels(text)[0].numpy() == renderer.foreground


def test_the_font_ships_with_its_licence():
    files = font_files()
    assert files and all(f.suffix == ".gz" for f in files)
    notice = (files[0].parent / "UNIFONT-LICENSE.txt").read_text()
    assert "SIL Open Font License" in notice and "GNU General Public License" in notice


def test_defaults_are_big_visions_clippo_settings():
    r = TextRenderer()
    assert (r.image_size, r.font_size, r.max_chars, r.background, r.foreground, r.lower) == (224, 16, 768, 127, 0, True)
    assert r(["Hello"]).shape == (1, 3, 224, 224)
    grey = r.pixels("Hello")
    assert grey.dtype == torch.uint8 and grey.shape == (3, 224, 224)
    assert set(grey.unique().tolist()) == {0, 127} and torch.equal(grey[0], grey[2])


def test_glyphs_are_unifont_bitmaps_trimmed_and_laid_out_left_to_right():
    r = TextRenderer(image_size=64)
    a, b = hex_glyph(ord("a")), hex_glyph(ord("b"))

    def trimmed(g):  # big_vision's trim: one blank column before the first inked one, to the last inked one
        cols = np.flatnonzero(g.any(0))
        return g[:, max(cols[0] - 1, 0) : cols[-1] + 1]

    expected = np.zeros((64, 64), dtype=bool)
    ta, tb = trimmed(a), trimmed(b)
    expected[:16, : ta.shape[1]] = ta
    expected[:16, ta.shape[1] : ta.shape[1] + tb.shape[1]] = tb
    assert np.array_equal(ink(r, "ab"), expected)
    assert np.array_equal(ink(r, "AB"), expected)  # lowercased
    assert not np.array_equal(ink(TextRenderer(image_size=64, lower=False), "AB"), expected)
    # monospace: every character a whole 16-px cell
    mono = ink(TextRenderer(image_size=64, monospace=True), "ab")
    assert np.array_equal(mono[:16, :8], a) and np.array_equal(mono[:16, 16:24], b)


def test_rendering_is_deterministic():
    text = "a red apple 🍎 und Äpfel, 苹果, яблоко"
    one, two = TextRenderer(image_size=96), TextRenderer(image_size=96, cache_size=0)
    assert torch.equal(one([text, text]), two([text, text]))
    assert torch.equal(one([text])[0], one([text])[0])
    copy = pickle.loads(pickle.dumps(one))  # as a data worker gets it
    assert torch.equal(copy([text]), one([text]))


def test_long_text_wraps_onto_lines_and_is_cut_at_the_bottom():
    r = TextRenderer(image_size=64)
    lines = ink(r, "x" * 40).reshape(4, 16, 64).any(axis=(1, 2))
    assert lines.all()  # 40 characters fill all 4 lines of a 64-px image
    width = r.cells("x")[0].shape[1]
    # big_vision's rule: line k holds the characters whose running width is in [k * span, (k + 1) * span)
    per_line = (64 - width - 1) // width
    assert np.array_equal(ink(r, "x" * per_line)[16:], np.zeros((48, 64), dtype=bool))  # one line fits
    assert ink(r, "x" * (per_line + 1))[16:32].any()  # one more wraps
    assert np.array_equal(ink(r, "x" * 40), ink(r, "x" * 400))  # the rest is cut


def test_empty_text_is_a_blank_image():
    r = TextRenderer(image_size=32)
    for text in ("", "   ", "\u200d"):
        assert torch.equal(r.pixels(text), torch.full((3, 32, 32), 127, dtype=torch.uint8))
    assert r([]).shape == (0, 3, 32, 32)


def test_combining_marks_join_the_character_before_them():
    r = TextRenderer(image_size=64)
    assert np.array_equal(ink(r, "e\u0301"), ink(r, "é"))  # NFC
    # q + combining acute has no precomposed form: one cell, the union of both glyphs
    assert len(r.cells("q\u0301")) == len(r.cells("q")) == 1
    q, acute = hex_glyph(ord("q")), hex_glyph(0x0301)
    cell = r.cells("q\u0301")[0] > 0
    assert cell.sum() == (q.astype(bool) | acute.astype(bool)).sum() > q.sum()
    # Devanagari: vowel signs join their consonant's 16-px cell where Unifont's combining table
    # puts them (-16: over the whole cell), the spacing ones (Mc: ा, ि) too
    for syllable in ("कु", "का", "कि", "क्"):
        assert len(r.cells(syllable)) == 1, syllable
        expected = hex_glyph(0x0915).astype(bool) | hex_glyph(ord(syllable[1])).astype(bool)
        cell = r.cells(syllable)[0] > 0
        assert cell.sum() == expected.sum() > hex_glyph(0x0915).sum(), syllable


def test_wide_glyphs_take_their_sixteen_columns():
    r = TextRenderer(image_size=64)
    assert hex_glyph(ord("中")).shape == (16, 16)
    glyph = hex_glyph(ord("中"))
    cols = np.flatnonzero(glyph.any(0))
    cell = r.cells("中")[0]
    assert cell.shape[1] > 8 and np.array_equal(cell, glyph[:, max(cols[0] - 1, 0) : cols[-1] + 1])


def test_a_character_the_font_lacks_is_a_visible_box():
    r = TextRenderer(image_size=32)
    font = UnifontHex.load(font_files())
    # Unifont draws unassigned BMP code points itself (a box with the hex code); it lacks the
    # private use area and, as shipped, the planes above the BMP (emoji, historic scripts)
    absent = [0xE000, 0xE001, 0x10300]  # private use, Old Italic
    assert all(font.cell(cp) is None for cp in absent) and font.cell(0x0378) is not None
    box, width = missing_glyph(absent[0])
    assert width == 8 and box[2, 1:7].all() and box[13, 1:7].all() and box[2:14, 1].all() and not box[5, 3]
    pixels = ink(r, chr(absent[0]))
    assert pixels[:16, :8].any() and pixels[:, 8:].sum() == 0
    assert np.array_equal(pixels, ink(r, chr(absent[1]))) and np.array_equal(pixels, ink(r, chr(absent[2])))
    assert font.cell(0x1F600) is None and missing_glyph(0x1F600)[1] == 16  # an emoji: a wide box
    assert ink(r, "\U0001F600")[:16, 8:15].any()


def test_every_language_of_the_builtin_labels_renders_without_boxes():
    """Unifont has a glyph for every character of the emoji labels in all nine languages."""
    font = UnifontHex.load(font_files())
    r = TextRenderer()
    labels = {lang: set() for lang in LANGUAGES}
    for shard in sorted((builtin_root() / "emoji" / "google").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    info = json.loads(tar.extractfile(member).read())
                    for lang in LANGUAGES:
                        labels[lang].add(info["labels"][lang])
    for lang, texts in labels.items():
        assert len(texts) > 300, lang
        chars = {cp for t in texts for cp in r.characters(t)
                 if not chr(cp).isspace() and unicodedata.category(chr(cp)) != "Cf"}
        missing = sorted(f"U+{cp:04X}" for cp in chars if font.cell(cp) is None)
        assert not missing, f"{lang}: no glyph for {missing[:10]}"
    sample = {lang: next(iter(sorted(texts))) for lang, texts in labels.items()}
    for lang, text in sample.items():
        assert ink(r, text).any(), lang


def test_normalised_as_the_image_transforms_normalise_images():
    r = TextRenderer(image_size=48)
    texts = ["grinning face", "大笑"]
    out = r(texts)
    for text, rendered in zip(texts, out):
        image = Image.fromarray(r.pixels(text).permute(1, 2, 0).numpy())
        assert torch.equal(rendered, image_transform(48, False)(image))  # the same numbers
    assert out.dtype == torch.float32 and out.shape == (2, 3, 48, 48)


def test_other_font_sizes_resize_the_cells_by_area():
    r = TextRenderer(image_size=64, font_size=8)
    cells = r.cells("ab")
    assert all(c.shape[0] == 8 for c in cells)
    lines = (r.pixels("x" * 200)[0] < 127).reshape(8, 8, 64).any(axis=(1, 2))
    assert lines.all()  # 8 lines of 8 px
    levels = r.pixels("ab")[0].unique()
    assert len(levels) > 2 and levels.max() == 127  # area averaging gives grey levels


def test_the_cache_is_bounded_and_returns_the_same_images():
    r = TextRenderer(image_size=32, cache_size=2)
    texts = ["one", "two", "three", "two"]
    first = r(texts)
    assert list(r._cache) == ["three", "two"]
    assert torch.equal(first, TextRenderer(image_size=32, cache_size=0)(texts))
    assert torch.equal(r(texts), first)


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 16}, "image_size \\(16\\) must exceed font_size \\(16\\)"),
    ({"background": 300}, "background must be a grey level"),
    ({"font": ["missing.hex"]}, "font file not found: missing.hex"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(VLPError, match=message):
        TextRenderer(**kwargs)

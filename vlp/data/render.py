"""TextRenderer: text drawn into an image, as CLIPPO reads it (Tschannen et al. 2023).

Follows big_vision's ``render_unifont`` op (``big_vision/pp/proj/clippo/pp_ops.py``): every
character is its GNU Unifont bitmap (16 rows; 8 columns, or 16 for wide glyphs such as CJK),
put in a 16 x 16 cell; unless ``monospace``, each cell is trimmed to its inked columns (one
blank column of ``spacing`` before, at least ``min_width`` wide, so that a space stays a
gap); the cells run left to right and wrap onto the next 16-px line where their running
width passes ``image_size`` minus the widest cell (big_vision's rule: lines break between
any two characters, not at spaces); lines past the bottom are cut. Text pixels are
``foreground`` (0, black) on ``background`` (127, grey), the same grey in the three
channels; the text is lowercased and cut to ``max_chars`` characters first. The image then
goes through the image transforms' normalisation (vlp.data.transforms: ``ToTensor`` and
``Normalize(mean, std)``), so that one tower reads images and rendered texts alike, as
big_vision's ``value_range(-1, 1)`` follows both.

Where this differs from big_vision, on purpose:
- a character the font lacks is a visible box (big_vision draws nothing and keeps a blank
  ``min_width`` gap): a caption in an unsupported script is not mistaken for spaces;
- the text is NFC-normalised, and a combining character is drawn into the cell of the
  character before it (big_vision gives each its own cell): where Unifont's combining table
  (``assets/unifont-*-combining.txt``, the offsets Unifont's own TrueType build uses) gives
  an offset, the mark starts that many columns before the end of the previous glyph
  (Devanagari vowel signs, virama, nukta, accents); other marks (Unicode category Mn / Me)
  are right-aligned in it; format characters (ZWJ, ZWNJ, variation selectors) draw nothing;
  white space (tab, newline) is a space;
- lowercasing is Unicode's (``str.lower``), not ASCII only (TensorFlow's ``strings.lower``);
- ``font_size`` other than 16 resizes the cell with a box (area) filter, as big_vision's
  ``resize_method="area"``, by PIL rather than TensorFlow (values may differ by rounding).

The font is GNU Unifont 15.0.01 (its Basic Multilingual Plane ``.hex``, gzipped, from Debian's
``unifont`` package, in ``vlp/data/assets``; licence in ``assets/UNIFONT-LICENSE.txt``);
big_vision used Unifont 9.0.06 with its upper planes (emoji, historic scripts), which vlp
does not ship: those characters get the box. Nothing is read from the system or downloaded.
"""

from __future__ import annotations

import functools
import gzip
import threading
import unicodedata
from collections import OrderedDict
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlp.data.transforms import OPENAI_MEAN, OPENAI_STD
from vlp.errors import VLPError

CELL = 16  # Unifont's glyph height and its widest glyph


def assets_dir() -> Path:
    return Path(str(resources.files("vlp.data") / "assets"))


def font_files() -> list[Path]:
    """The shipped Unifont ``.hex.gz`` files."""
    return sorted(assets_dir().glob("unifont*.hex.gz"))


@functools.lru_cache(maxsize=1)
def combining_offsets() -> dict[int, int]:
    """Unifont's combining table: code point -> columns from the end of the previous glyph at
    which the mark starts (-8, -16, ...; 0 = drawn in place, no offset given)."""
    offsets = {}
    for path in sorted(assets_dir().glob("unifont*-combining.txt")):
        for line in path.read_text(encoding="ascii").splitlines():
            code, _, offset = line.partition(":")
            if code.strip():
                offsets[int(code, 16)] = int(offset)
    return offsets


class UnifontHex:
    """Glyphs of Unifont ``.hex`` files (``CODEPOINT:HEXBITS`` lines, plain or gzipped).

    ``cell(cp)`` is a bool ``[16, 16]`` array (the glyph in the left columns) and the glyph's
    width (8 or 16), or None for a code point the font lacks. Lines are decoded on first use.
    """

    _loaded: dict[tuple[str, ...], UnifontHex] = {}
    _lock = threading.Lock()

    def __init__(self, paths: list[Path]):
        if not paths:
            raise VLPError("no Unifont .hex files found (vlp/data/assets/unifont*.hex.gz is part of the package: "
                           "reinstall vlp)")
        self.hex: dict[int, str] = {}
        for path in paths:
            if not Path(path).is_file():
                raise VLPError(f"font file not found: {path}")
            opener = gzip.open if str(path).endswith(".gz") else open
            with opener(path, "rt", encoding="ascii") as f:
                for number, line in enumerate(f, 1):
                    code, sep, bits = line.strip().partition(":")
                    if not line.strip():
                        continue
                    if not sep or len(bits) not in (32, 64):
                        raise VLPError(f"font file {path}:{number}: not a Unifont .hex line (CODEPOINT:32 or 64 "
                                       "hex digits)")
                    self.hex[int(code, 16)] = bits
        self._cells: dict[int, tuple[np.ndarray, int] | None] = {}

    @classmethod
    def load(cls, paths: list[Path]) -> UnifontHex:
        """One parsed copy per process and file list (data workers share it after a fork)."""
        key = tuple(str(p) for p in paths)
        with cls._lock:
            if key not in cls._loaded:
                cls._loaded[key] = cls(list(paths))
            return cls._loaded[key]

    def cell(self, cp: int) -> tuple[np.ndarray, int] | None:
        if cp not in self._cells:
            bits = self.hex.get(cp)
            if bits is None:
                self._cells[cp] = None
            else:
                width = len(bits) // 4  # 16 rows of 8 or 16 bits
                glyph = np.unpackbits(np.frombuffer(bytes.fromhex(bits), dtype=np.uint8)).reshape(CELL, width)
                cell = np.zeros((CELL, CELL), dtype=bool)
                cell[:, :width] = glyph.astype(bool)
                self._cells[cp] = (cell, width)
        return self._cells[cp]


def missing_glyph(cp: int) -> tuple[np.ndarray, int]:
    """A hollow box for a character the font lacks: 16 columns for East Asian wide
    characters, else 8."""
    width = CELL if unicodedata.east_asian_width(chr(cp)) in ("W", "F") else CELL // 2
    cell = np.zeros((CELL, CELL), dtype=bool)
    top, bottom, left, right = 2, CELL - 3, 1, width - 2
    cell[top, left : right + 1] = cell[bottom, left : right + 1] = True
    cell[top : bottom + 1, left] = cell[top : bottom + 1, right] = True
    return cell, width


def overlay(base: np.ndarray, width: int, mark: np.ndarray, mark_width: int,
            offset: int | None) -> tuple[np.ndarray, int]:
    """``mark`` drawn into the cell of ``base`` (``width`` columns), starting ``-offset``
    columns before its end (Unifont's combining offset), or right-aligned when None; columns
    outside the cell are dropped."""
    start = width + offset if offset is not None else width - mark_width
    merged = base.copy()
    lo, hi = max(start, 0), min(start + mark_width, CELL)
    if hi > lo:
        merged[:, lo:hi] |= mark[:, lo - start : hi - start]
    return merged, width


class TextRenderer:
    """Texts -> images ``[B, 3, image_size, image_size]``, normalised as the image transforms
    normalise images (see the module docstring for the rendering, after big_vision's
    ``render_unifont``; its defaults are big_vision's CLIPPO settings).

    Args:
        image_size: side of the square image (big_vision: the model's resolution, 224).
        font_size: line height and cell side in pixels; 16 = Unifont's own size (no resizing).
        max_chars: characters rendered at most (the rest would not fit anyway).
        background: grey level of the background (0-255).
        foreground: grey level of the text.
        lower: lowercase the text first.
        monospace: every character a full cell (no trimming).
        spacing: blank columns kept before a trimmed glyph.
        min_width: narrowest trimmed cell (a space keeps this width).
        mean, std: the normalisation of the images (vlp.data.transforms' defaults: CLIP's).
        cache_size: rendered texts kept per process (least recently used dropped), so a
            caption or prompt seen again is not drawn again; 0 = no cache.
        font: Unifont ``.hex`` / ``.hex.gz`` files (e.g. a release with the upper planes);
            None = the one shipped with vlp. Unifont's shipped combining table applies to any.

    Calling it on a list of strings gives the float tensor ``[B, 3, H, W]`` (as a tokenizer
    gives ids); ``pixels(text)`` gives one image as uint8 ``[3, H, W]`` before normalisation.
    """

    def __init__(self, image_size: int = 224, font_size: int = 16, max_chars: int = 768, background: int = 127,
                 foreground: int = 0, lower: bool = True, monospace: bool = False, spacing: int = 1,
                 min_width: int = 4, mean: tuple[float, float, float] = OPENAI_MEAN,
                 std: tuple[float, float, float] = OPENAI_STD, cache_size: int = 4096,
                 font: list[str] | None = None):
        if font_size < 1 or image_size <= font_size:
            raise VLPError(f"text renderer: image_size ({image_size}) must exceed font_size ({font_size}) >= 1")
        for name, value in (("background", background), ("foreground", foreground)):
            if not 0 <= value <= 255:
                raise VLPError(f"text renderer: {name} must be a grey level in [0, 255], got {value}")
        if max_chars < 0 or spacing < 0 or min_width < 1 or cache_size < 0:
            raise VLPError("text renderer: max_chars, spacing and cache_size must be >= 0, min_width >= 1")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise VLPError(f"text renderer: mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.image_size = image_size
        self.font_size = font_size
        self.max_chars = max_chars
        self.background = background
        self.foreground = foreground
        self.lower = lower
        self.monospace = monospace
        self.spacing = spacing
        self.min_width = min_width
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.cache_size = cache_size
        self.font_paths = [Path(p) for p in font] if font else font_files()
        UnifontHex.load(self.font_paths)  # a missing or malformed font fails here, not in a data worker
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    # data workers get a copy without the parsed font and the cache (each loads its own once)
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    @property
    def font(self) -> UnifontHex:
        return UnifontHex.load(self.font_paths)

    def characters(self, text: str) -> list[int]:
        """The code points drawn: lowercased, NFC, cut to ``max_chars``."""
        if self.lower:
            text = text.lower()
        text = unicodedata.normalize("NFC", text)
        return [ord(c) for c in text[: self.max_chars]]

    def cells(self, text: str) -> list[np.ndarray]:
        """One float ``[font_size, w]`` array per drawn character (ink 1, paper 0): combining
        marks merged into the cell before them, format characters dropped, cells resized to
        ``font_size`` and (unless ``monospace``) trimmed."""
        font, offsets = self.font, combining_offsets()
        space = font.cell(0x20) or (np.zeros((CELL, CELL), dtype=bool), CELL // 2)
        glyphs: list[tuple[np.ndarray, int]] = []
        for cp in self.characters(text):
            char = chr(cp)
            category = unicodedata.category(char)
            if char.isspace():
                glyphs.append(space)
                continue
            if category == "Cf":  # zero-width joiners, marks of direction, variation selectors
                continue
            glyph = font.cell(cp) or missing_glyph(cp)
            offset = offsets.get(cp) or None
            if glyphs and (offset is not None or category in ("Mn", "Me")):
                glyphs[-1] = overlay(*glyphs[-1], *glyph, offset)
            else:
                glyphs.append(glyph)
        out = []
        for cell, _ in glyphs:
            letter = cell.astype(np.float32)
            if self.font_size != CELL:
                letter = _area_resize(letter, self.font_size)
            if not self.monospace:
                letter = self._trim(letter)
            out.append(letter)
        return out

    def _trim(self, letter: np.ndarray) -> np.ndarray:
        """big_vision's trim: from one ``spacing`` column before the first inked column to the
        last inked one, at least ``min_width`` wide (a blank cell: its first ``min_width``)."""
        inked = np.flatnonzero(letter.max(axis=0) > 0)
        first, last = (int(inked[0]), int(inked[-1])) if len(inked) else (0, 0)
        first = max(first - self.spacing, 0)
        last = max(last + self.spacing, first + self.min_width)
        return letter[:, first:last]

    def coverage(self, text: str) -> np.ndarray:
        """Float ``[H, W]`` ink in ``[0, 1]`` (1 = text), laid out as big_vision lays it out."""
        size = self.image_size
        page = np.zeros((size, size), dtype=np.float32)
        letters = self.cells(text)
        if not letters:
            return page
        widths = np.array([x.shape[1] for x in letters])
        # the k-th line holds the letters whose running width (their own included) is in
        # [k * span, (k + 1) * span): a line is never wider than the image
        span = size - int(widths.max())
        lines = np.cumsum(widths) // span
        height = letters[0].shape[0]
        x, current = 0, 0
        for letter, line, width in zip(letters, lines.tolist(), widths.tolist()):
            top = line * height
            if top >= size:  # below the image: cut, as big_vision cuts
                break
            if line != current:
                x, current = 0, line
            page[top : top + height, x : x + width] = letter[: size - top]
            x += width
        return page

    def pixels(self, text: str) -> torch.Tensor:
        """uint8 ``[3, H, W]``: the rendered text before normalisation."""
        return torch.from_numpy(self._grey(self._coverage(text))).expand(3, -1, -1).clone()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """``[B, 3, H, W]`` float, normalised as images (``(x / 255 - mean) / std``)."""
        if isinstance(texts, str):
            texts = [texts]
        size = self.image_size
        if not texts:
            return torch.zeros(0, 3, size, size)
        grey = torch.from_numpy(np.stack([self._grey(self._coverage(t)) for t in texts]))
        # every grey level's normalised value per channel, computed as torchvision's ToTensor
        # (x / 255) and Normalize ((x - mean) / std) compute it, so the values are those of an
        # image with these pixels; looked up rather than computed per pixel (1.7x faster)
        levels = torch.arange(256, dtype=torch.uint8).float().div(255)
        table = levels.view(256, 1).sub(torch.tensor(self.mean)).div(torch.tensor(self.std))  # [256, 3]
        return F.embedding(grey.long(), table).permute(0, 3, 1, 2).contiguous()

    def _grey(self, coverage: np.ndarray) -> np.ndarray:
        """uint8 grey levels: background + ink * (foreground - background), truncated as
        big_vision's cast to uint8."""
        level = self.background + coverage * np.float32(self.foreground - self.background)
        return np.trunc(level).astype(np.uint8)

    def _coverage(self, text: str) -> np.ndarray:
        """``coverage(text)`` through the LRU cache (binary ink, the font_size 16 case, kept
        as packed bits: 1/32 of the float array)."""
        if not self.cache_size:
            return self.coverage(text)
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return _unpack(hit, self.image_size)
        page = self.coverage(text)
        self._cache[text] = _pack(page)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return page


def _pack(page: np.ndarray) -> np.ndarray:
    if np.isin(page, (0.0, 1.0)).all():
        return np.packbits(page.astype(bool), axis=-1)
    return page


def _unpack(stored: np.ndarray, size: int) -> np.ndarray:
    if stored.dtype == np.uint8:
        return np.unpackbits(stored, axis=-1, count=size).astype(np.float32)
    return stored


def _area_resize(letter: np.ndarray, size: int) -> np.ndarray:
    """``[16, 16]`` -> ``[size, size]`` with a box filter (each output pixel the mean of the
    input area it covers), as big_vision's antialiased area resize."""
    from PIL import Image

    image = Image.fromarray(letter, mode="F").resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32).clip(0, 1)

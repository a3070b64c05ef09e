"""Image decoding shared by training and evaluation, so that an image looks the same to both.

``decode_image`` checks the size from the header before decoding (decompression bombs),
turns any decoder failure into ``BadSample("corrupt_image")`` and converts the result to
RGB with ``to_rgb`` (transparency composited on white).
"""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter
from collections.abc import Callable

from PIL import Image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

CONVERT_REASONS = ("alpha_on_white", "mode_to_rgb")


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is its skip counter's name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def image_member(sample: dict) -> str:
    """The extension of the sample's image member (the first of ``IMAGE_EXTS`` present)."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise BadSample("no_image")
    return ext


def sample_json(sample: dict) -> dict:
    """The sample's json member as a dict, parsed once per sample (cached in the sample under
    ``__json__``); ``{}`` when it has none or it is not a JSON object."""
    info = sample.get("__json__")
    if info is None:
        try:
            info = json.loads(sample["json"]) if "json" in sample else {}
        except (ValueError, UnicodeDecodeError):
            info = {}
        if not isinstance(info, dict):
            info = {}
        sample["__json__"] = info
    return info


def json_value(info: dict, path: tuple[str, ...]):
    """The value at a json path (``("labels", "de")``), None where it is missing."""
    value = info
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def to_rgb(im: Image.Image, counts: Counter | None = None) -> Image.Image:
    """RGB as training sees it: transparent images (RGBA, LA, PA, palette with transparency)
    composited on white (counted ``alpha_on_white``), other modes converted (``mode_to_rgb``)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        reason = "alpha_on_white"
    elif im.mode != "RGB":
        out, reason = im.convert("RGB"), "mode_to_rgb"
    else:
        return im
    if counts is not None:
        counts[reason] += 1
    return out


def decode_image(data: bytes, max_pixels: int = 89_478_485, counts: Counter | None = None,
                 check_size: Callable[[int, int], None] | None = None) -> Image.Image:
    """Encoded image bytes -> RGB PIL image; raises ``BadSample`` (``too_many_pixels``, judged
    from the header before decoding, or ``corrupt_image``); conversions go to ``counts``.
    ``check_size(width, height)`` may raise ``BadSample`` too, from the header, before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise BadSample("too_many_pixels")
            if check_size is not None:
                check_size(w, h)
            im.load()
    except Image.DecompressionBombError:
        raise BadSample("too_many_pixels") from None
    except BadSample:
        raise
    except Exception:  # noqa: BLE001 - any decoder failure means a corrupt image
        raise BadSample("corrupt_image") from None
    return to_rgb(im, counts)

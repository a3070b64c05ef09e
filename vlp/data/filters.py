"""Metadata filters applied while reading (img2dataset shards): image size and aspect ratio,
caption length, boolean json columns.

A filtered sample is dropped from training and counted by reason (``filter_<reason>``,
logged as ``data/filtered_<reason>``, summed up at the end of `vlp fit`), like a bad sample;
filtered samples do not count towards ``data.max_bad_fraction`` (they are not broken).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vlp.data.decode import BadSample, sample_json
from vlp.errors import VLPError

FILTER_REASONS = ("filter_small_image", "filter_aspect_ratio", "filter_short_caption", "filter_long_caption")


class Filtered(BadSample):
    """A sample that a ``SampleFilters`` rule drops (``reason`` is its counter's name)."""


@dataclass
class SampleFilters:
    """Which samples to train on (``data.filters``); every rule is off when unset.

    The image's size is the json's ``width`` and ``height`` when the sample's json has both
    (img2dataset writes the stored image's size there; ``original_width`` / ``original_height``
    are the source image's), else the image header's (read before decoding). The caption is
    the one drawn for the sample, before any template.

    Args:
        min_side: the shorter image side must be at least this many pixels
            (``filter_small_image``).
        max_aspect: the longer side over the shorter must be at most this (>= 1;
            ``filter_aspect_ratio``); orientation does not matter.
        min_caption_chars: the caption (stripped) must have at least this many characters
            (``filter_short_caption``).
        max_caption_chars: ... at most this many (``filter_long_caption``).
        require: json columns that must be ``true`` (a JSON boolean); a sample where one is
            false, missing or not a boolean is counted ``filter_require_<column>``.
    """

    min_side: int | None = None
    max_aspect: float | None = None
    min_caption_chars: int | None = None
    max_caption_chars: int | None = None
    require: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.require = list(self.require or [])
        for name in ("min_side", "min_caption_chars", "max_caption_chars"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise VLPError(f"data.filters.{name} must be an integer >= 0, got {value!r}")
        if self.max_aspect is not None and (isinstance(self.max_aspect, bool)
                                            or not isinstance(self.max_aspect, (int, float))
                                            or not math.isfinite(self.max_aspect) or self.max_aspect < 1):
            raise VLPError(f"data.filters.max_aspect must be a number >= 1 (longer side / shorter), "
                           f"got {self.max_aspect!r}")
        if (self.min_caption_chars is not None and self.max_caption_chars is not None
                and self.min_caption_chars > self.max_caption_chars):
            raise VLPError(f"data.filters: min_caption_chars {self.min_caption_chars} > max_caption_chars "
                           f"{self.max_caption_chars}")
        for column in self.require:
            if not isinstance(column, str) or not column:
                raise VLPError(f"data.filters.require: give json column names, got {column!r}")
        self._required = [(column, f"filter_require_{column}") for column in self.require]
        self.sized = self.min_side is not None or self.max_aspect is not None

    @classmethod
    def of(cls, value: SampleFilters | dict | None) -> SampleFilters | None:
        """``data.filters`` as given (a dict in Python) -> SampleFilters; unknown keys name themselves."""
        if value is None or isinstance(value, SampleFilters):
            return value
        if not isinstance(value, dict):
            raise VLPError(f"data.filters must be a mapping of rules, got {value!r}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise VLPError(f"data.filters: unknown rule(s) {', '.join(unknown)}; the rules are "
                           f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**value)

    def reasons(self) -> list[str]:
        """The counter names this filter can produce (the same on every rank)."""
        return [*FILTER_REASONS, *(reason for _, reason in self._required)]

    def check_caption(self, caption: str) -> None:
        if self.min_caption_chars is None and self.max_caption_chars is None:
            return
        n = len(caption.strip())
        if self.min_caption_chars is not None and n < self.min_caption_chars:
            raise Filtered("filter_short_caption")
        if self.max_caption_chars is not None and n > self.max_caption_chars:
            raise Filtered("filter_long_caption")

    def check_json(self, sample: dict) -> bool:
        """The json rules; returns whether the image size was judged (from the json)."""
        if self._required:
            info = sample_json(sample)
            for column, reason in self._required:
                if info.get(column) is not True:
                    raise Filtered(reason)
        if not self.sized or "json" not in sample:
            return False
        info = sample_json(sample)
        width, height = info.get("width"), info.get("height")
        if not (isinstance(width, int) and isinstance(height, int)) or isinstance(width, bool) or width <= 0 \
                or height <= 0:
            return False
        self.check_size(width, height)
        return True

    def check_size(self, width: int, height: int) -> None:
        short, long = min(width, height), max(width, height)
        if self.min_side is not None and short < self.min_side:
            raise Filtered("filter_small_image")
        if self.max_aspect is not None and long > self.max_aspect * short:
            raise Filtered("filter_aspect_ratio")

"""Training sources and their mix: ``data.train_shards`` as one shard spec, or a list of
weighted sources (CC12M + CC3M, LAION + a curated set, ...).

One spec (a string) is one source: the stream is the plain shard stream. A list gives
sources; each data worker then reads its part of every source (its own shuffled shard passes
per source) and draws each next sample's source at random, in proportion to the sources'
shares, from an RNG seeded per ``(seed, epoch, rank, worker)`` like the rest of the stream.

What an epoch is with several sources (as open_clip's ``::``-joined sources with
``--train-data-upsampling-factors``): ``sum(size x repeat)`` samples, a source's size
counted from its shards (img2dataset ``*_stats.json`` or the tar index) unless given as
``samples``; ``data.train_num_samples`` overrides it. The shares are the ``weight`` s when
given (for every source or none), else ``size x repeat``: so without weights each source is
read ``repeat`` times per epoch, in expectation. A source whose share asks for more samples
than it holds starts another shuffled pass over its shards, one that asks for fewer leaves
the rest of its (shuffled) pass unread; the next epoch starts fresh passes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from vlp.data.shards import count_samples, expand_shards
from vlp.errors import VLPError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ShardSource:
    """One source of a mixed training stream (an item of ``data.train_shards``).

    Args:
        shards: shard spec: path, brace or glob pattern, ``a::b``, ``builtin:...``.
        weight: the source's share of the samples drawn, relative to the other sources'
            weights (> 0); give it for every source or for none (then the shares are
            ``size x repeat``).
        repeat: how many times the source counts in the epoch length (> 0; open_clip's
            upsampling factor: 2 reads it twice per epoch when no weights are given).
        samples: the source's size; None = counted from its shards.
        name: its name in the logs (``data/source_NAME``) and in the summary; None = the
            folder of its first shard (``source0``, ``source1``, ... when those collide).
    """

    shards: str
    weight: float | None = None
    repeat: float = 1.0
    samples: int | None = None
    name: str | None = None


class MixPart(NamedTuple):
    """A resolved source as the stream reads it."""

    name: str
    shards: list[str]
    share: float


@dataclass
class Source:
    """A source with its shards expanded (``size`` is filled in when first needed)."""

    name: str
    shards: list[str]
    weight: float | None
    repeat: float
    size: int | None


def resolve_sources(spec: str | list) -> list[Source] | None:
    """The sources of a ``data.train_shards`` list, checked, with their shards expanded;
    None for a plain shard spec (a string). An error names the source (its index and spec)."""
    if isinstance(spec, str):
        return None
    if not isinstance(spec, (list, tuple)) or not spec:
        raise VLPError(f"data.train_shards must be a shard spec or a non-empty list of sources, got {spec!r}")
    items = [_as_source(i, item) for i, item in enumerate(spec)]
    given = [s.weight is not None for s in items]
    if any(given) and not all(given):
        missing = [f"data.train_shards[{i}] ({s.shards})" for i, s in enumerate(items) if s.weight is None]
        raise VLPError(f"give a weight for every source or for none; missing: {', '.join(missing)}")
    out = []
    for i, item in enumerate(items):
        try:
            shards = expand_shards(item.shards)
        except VLPError as e:
            raise VLPError(f"data.train_shards[{i}] ({item.shards}): {e}") from None
        out.append(Source(item.name or "", shards, item.weight, float(item.repeat), item.samples))
    derived = [re.sub(r"[^A-Za-z0-9_.-]", "_", Path(s.shards[0]).parent.name) or f"source{i}"
               for i, s in enumerate(out)]
    if len(set(derived)) < len(derived):
        derived = [f"source{i}" for i in range(len(out))]
    for i, source in enumerate(out):
        source.name = source.name or derived[i]
    names = [s.name for s in out]
    if len(set(names)) < len(names):
        raise VLPError(f"data.train_shards: source names must differ, got {names}")
    return out


def _as_source(i: int, item) -> ShardSource:
    where = f"data.train_shards[{i}]"
    if isinstance(item, str):
        item = ShardSource(shards=item)
    elif isinstance(item, dict):
        unknown = sorted(set(item) - set(ShardSource.__dataclass_fields__))
        if unknown:
            raise VLPError(f"{where}: unknown key(s) {', '.join(unknown)}; a source takes "
                           f"{', '.join(ShardSource.__dataclass_fields__)}")
        if "shards" not in item:
            raise VLPError(f"{where}: no 'shards' given ({item!r})")
        item = ShardSource(**item)
    elif not isinstance(item, ShardSource):
        raise VLPError(f"{where}: a source is a shard spec or {{shards: ..., weight: ...}}, got {item!r}")
    where += f" ({item.shards})"
    if not isinstance(item.shards, str) or not item.shards.strip():
        raise VLPError(f"{where}: 'shards' must be a non-empty shard spec")
    for key in ("weight", "repeat"):
        value = getattr(item, key)
        if value is None and key == "weight":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise VLPError(f"{where}: {key} must be a number > 0, got {value!r}")
    if item.samples is not None and (isinstance(item.samples, bool) or not isinstance(item.samples, int)
                                     or item.samples < 1):
        raise VLPError(f"{where}: samples must be an integer >= 1, got {item.samples!r}")
    if item.name is not None and not _NAME.match(str(item.name)):
        raise VLPError(f"{where}: name {item.name!r} may hold only letters, digits, '_', '.', '-'")
    return item


def source_size(source: Source) -> int:
    """The source's size (counted from its shards once)."""
    if source.size is None:
        source.size = sum(count_samples(s) for s in source.shards)
    return source.size


def epoch_samples(sources: list[Source]) -> int:
    """The epoch of a mix: ``sum(size x repeat)`` (see the module docstring)."""
    return sum(round(source_size(s) * s.repeat) for s in sources)


def mix_parts(sources: list[Source]) -> list[MixPart]:
    """The sources with their shares (summing to 1): the weights, else ``size x repeat``."""
    raw = [s.weight if s.weight is not None else source_size(s) * s.repeat for s in sources]
    if sum(raw) <= 0:
        raise VLPError("data.train_shards: the sources hold no samples")
    total = float(sum(raw))
    return [MixPart(s.name, s.shards, w / total) for s, w in zip(sources, raw)]

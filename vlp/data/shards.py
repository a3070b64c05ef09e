"""Shard specifications: brace / glob patterns, ``builtin:`` data, sample counts."""

from __future__ import annotations

import glob
import json
import tarfile
from importlib import resources
from pathlib import Path

from vlp.errors import VLPError

BUILTIN_PREFIX = "builtin:"
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


def builtin_root() -> Path:
    """The folder of the data sets shipped in the package (``builtin:emoji/...``)."""
    return Path(str(resources.files("vlp.data")))


def _braceexpand(pattern: str) -> list[str]:
    from webdataset.shardlists import expand_urls

    return list(expand_urls(pattern))


def expand_shards(spec: str | list[str]) -> list[str]:
    """Expand a shard spec into a sorted list of shard paths.

    ``spec``: a path, a brace pattern (``data/{00000..00099}.tar``), a glob
    (``data/*.tar``), ``builtin:emoji/google/train-*.tar``, several of these
    joined with ``::`` or given as a list. Remote urls pass through unchecked.
    A local pattern that matches no file is an error that names it.
    """
    parts = spec if isinstance(spec, list) else str(spec).split("::")
    out: list[str] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if part.startswith(BUILTIN_PREFIX):
            part = str(builtin_root() / part[len(BUILTIN_PREFIX):])
        if part.startswith(REMOTE_PREFIXES):
            out += _braceexpand(part)
            continue
        found = []
        for pat in _braceexpand(part):
            found += sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat] if Path(pat).is_file() else []
        if not found:
            raise VLPError(f"shard path '{part}' matches no file")
        out += found
    if not out:
        raise VLPError(f"no shards given ({spec!r})")
    return out


def count_samples(shard: str) -> int:
    """Samples in one local shard: an img2dataset ``*_stats.json`` if present, else the tar index."""
    stats = Path(shard).with_name(Path(shard).stem + "_stats.json")
    if stats.is_file():
        return int(json.loads(stats.read_text())["successes"])
    keys = set()
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile():
                    keys.add(member.name.partition(".")[0])
    except (OSError, tarfile.TarError) as e:
        raise VLPError(f"cannot read shard {shard}: {e}") from None
    return len(keys)

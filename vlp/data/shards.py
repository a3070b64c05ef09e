"""Shard specifications: brace / glob patterns, ``builtin:`` data, sample counts."""

from __future__ import annotations

import glob
import json
import tarfile
from importlib import resources
from pathlib import Path

from vlp.data.tar_reader import split_key
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
    A local pattern that matches no file, and a local file that is not a tar archive
    (judged from its first header block), are errors that name them.
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
        for path in found:
            check_tar(path)
        out += found
    if not out:
        raise VLPError(f"no shards given ({spec!r})")
    return out


def check_tar(path: str) -> None:
    """A local shard must be an uncompressed tar archive: its first header block is read and
    checked (512 bytes; a damaged later part is found, skipped and counted while reading)."""
    try:
        with open(path, "rb") as f:
            block = f.read(tarfile.BLOCKSIZE)
    except OSError as e:
        raise VLPError(f"cannot read shard {path}: {e.strerror or e}") from None
    if not block:
        raise VLPError(f"shard {path} is not a tar file (an empty file)")
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.EOFHeaderError:
        pass  # the end-of-archive block: an archive without members
    except tarfile.HeaderError:
        kind = "gzip-compressed; give plain .tar shards" if block[:2] == b"\x1f\x8b" else "no tar header at its start"
        raise VLPError(f"shard {path} is not a tar file ({kind})") from None


def count_samples(shard: str) -> int:
    """Samples in one local shard: an img2dataset ``*_stats.json`` if present, else the tar index."""
    stats = Path(shard).with_name(Path(shard).stem + "_stats.json")
    if stats.is_file():
        return int(json.loads(stats.read_text())["successes"])
    # a sample is a run of members with one key, as the tar reader groups them (headers only here)
    count, last = 0, None
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                split = split_key(member.name) if member.isfile() else None
                if split is not None and split[0] != last:
                    count, last = count + 1, split[0]
    except (OSError, tarfile.TarError) as e:
        raise VLPError(f"cannot read shard {shard}: {e}") from None
    return count

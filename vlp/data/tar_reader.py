"""Reading webdataset shards with truncation checks: the one tar reader of vlp.

Training, evaluation, the shard writer and sample counting all take a sample's key the
same way (``split_key``, webdataset's rule): the member name up to the first dot of its
basename is the key, the rest (lower-cased) the field, so ``a.b/0001.seg.png`` is sample
``a.b/0001``, field ``seg.png``.

Python's tarfile (and so webdataset's reader) ends a file that was cut at a header boundary
without complaint, and can hand back a short member. ``tar_samples`` reads a shard member
by member, checks every member's length and, for local files, that the archive ends with
its end-of-archive blocks; any failure raises ``ShardError`` naming the shard, after the
samples read before it were yielded.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator

import webdataset as wds

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's key / extension split


def split_key(name: str) -> tuple[str, str] | None:
    """``(key, field)`` of a tar member name (see the module docstring); None for a name
    without a field (no dot in its basename), which is not part of any sample."""
    match = _KEY_EXT.match(name)
    return None if match is None else (match.group(1), match.group(2).lower())


class ShardError(Exception):
    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def tar_samples(url: str) -> Iterator[dict]:
    """``{"__key__", "__url__", ext: bytes, ...}`` for each sample of the shard, in order."""
    try:
        if _is_local(url):
            size = os.path.getsize(url)
            tar = tarfile.open(url, mode="r:")
        else:
            size = None
            tar = tarfile.open(fileobj=wds.gopen(url), mode="r|*")
    except (OSError, tarfile.TarError) as e:
        raise ShardError(url, f"cannot open: {type(e).__name__}: {e}") from None
    current: dict = {}
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as e:
                raise ShardError(url, f"broken header: {e}") from None
            if member is None:
                break
            if not member.isfile():
                continue
            split = split_key(member.name)
            if split is None:
                continue
            key, ext = split
            if current and current["__key__"] != key:  # the previous sample is complete
                yield current
                current = {}
            try:
                data = tar.extractfile(member).read()
            except (OSError, tarfile.TarError) as e:
                raise ShardError(url, f"member {member.name} unreadable: {e}") from None
            if len(data) != member.size:
                raise ShardError(url, f"member {member.name} truncated ({len(data)} of {member.size} bytes)")
            if not current:
                current = {"__key__": key, "__url__": url}
            current[ext] = data
        if current:
            yield current
        if size is not None and size - tar.offset < 1024:
            raise ShardError(url, f"ends without the tar end-of-archive blocks (cut at byte {size}?)")

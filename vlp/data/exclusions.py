"""An exclusion list for the training stream: samples named in a file are never trained on.

``data.exclude_keys: FILE`` (written by ``vlp overlap --write-exclusions FILE``, or by hand):
one entry per line, ``#`` starts a comment line, blank lines are ignored::

    # KEY<TAB>SHARD: the sample KEY of that shard only (what `vlp overlap` writes)
    1f600	builtin:emoji/google/train-000000.tar
    000123456	/data/laion/00012.tar
    # KEY alone: that key in every training shard
    000987654

Why a key *and* its shard: keys need not be unique across shards (the built-in emoji data key
both drawing styles by the code point, and their shards share basenames, ``google/train-000000.tar``
and ``twitter/train-000000.tar``), so an entry found in one shard must not drop another shard's
sample with the same key. A shard is named by its real path (symlinks resolved; a relative path
is taken from the current directory) or, for the data shipped with vlp, ``builtin:PATH``, which
stays valid wherever vlp is installed; a remote url is compared as written. A sample is excluded
when its key and its shard (as the stream reads it, resolved the same way) are an entry, or its
key is a key-only entry.

The stream skips excluded samples before decoding and counts them ``excluded`` (not as bad);
they still count as raw samples read, so a resume skips them like any other and stays exact.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vlp.data.shards import BUILTIN_PREFIX, REMOTE_PREFIXES, builtin_root
from vlp.errors import VLPError


def canonical_shard(url: str) -> str:
    """The shard as entries and the stream compare it: ``builtin:`` expanded and every local
    path resolved (``os.path.realpath``); a remote url as it is."""
    if url.startswith(BUILTIN_PREFIX):
        url = str(builtin_root() / url[len(BUILTIN_PREFIX):])
    if url.startswith(REMOTE_PREFIXES):
        return url
    return os.path.realpath(url)


def portable_shard(url: str) -> str:
    """How an exclusion file names a shard: ``builtin:PATH`` for the data shipped with vlp,
    else its canonical form (see ``canonical_shard``)."""
    path = canonical_shard(url)
    root = os.path.realpath(builtin_root())
    if not url.startswith(REMOTE_PREFIXES) and path.startswith(root + os.sep):
        return BUILTIN_PREFIX + Path(os.path.relpath(path, root)).as_posix()
    return path


def format_entry(key: str, shard: str | None) -> str:
    """One line of an exclusion file (without the newline)."""
    return key if shard is None else f"{key}\t{portable_shard(shard)}"


class Exclusions:
    """The entries of an exclusion file: ``(canonical shard, key)`` pairs and keys for any shard."""

    def __init__(self, pairs: set[tuple[str, str]], keys: set[str], source: str = "<entries>"):
        self.pairs = frozenset(pairs)
        self.keys = frozenset(keys)
        self.source = source
        self._shard_keys: dict[str, set[str]] = {}
        for shard, key in self.pairs:
            self._shard_keys.setdefault(shard, set()).add(key)
        self._canonical: dict[str, str] = {}  # stream url -> canonical shard (resolved once per url)

    def __len__(self) -> int:
        return len(self.pairs) + len(self.keys)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Exclusions:
        """Read an exclusion file (see the module docstring); a malformed line is a one-line error."""
        where = f"data.exclude_keys {path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise VLPError(f"{where}: no such file (write one with `vlp overlap ... --write-exclusions FILE`)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise VLPError(f"{where}: cannot be read: {e}") from None
        pairs, keys = set(), set()
        for number, line in enumerate(text.splitlines(), 1):
            line = line.rstrip("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) > 2 or not fields[0].strip() or (len(fields) == 2 and not fields[1].strip()):
                raise VLPError(f"{where}: line {number} is not KEY or KEY<TAB>SHARD: {line[:80]!r}")
            key = fields[0].strip()
            if len(fields) == 2:
                pairs.add((canonical_shard(fields[1].strip()), key))
            else:
                keys.add(key)
        return cls(pairs, keys, str(path))

    def excluded(self, url: str, key: str) -> bool:
        """Whether the sample ``key`` read from shard ``url`` is excluded."""
        if key in self.keys:
            return True
        if not self.pairs:
            return False
        shard = self._canonical.get(url)
        if shard is None:
            shard = self._canonical[url] = canonical_shard(url)
        listed = self._shard_keys.get(shard)
        return listed is not None and key in listed

    def shards(self) -> set[str]:
        """The (canonical) shards the shard entries name."""
        return set(self._shard_keys)

    def count_in(self, shards: list[str]) -> int:
        """Shard entries that name one of ``shards`` (key-only entries are not counted: which
        shards hold them is not known without reading)."""
        return sum(len(self._shard_keys.get(s, ())) for s in {canonical_shard(u) for u in shards})

    def check_against(self, shards: list[str]) -> None:
        """An exclusion file whose shard entries name none of the training shards (and which has
        no key-only entries) was written for other data, or the data moved: say so."""
        if self.keys or not self.pairs:
            return
        mine = {canonical_shard(u) for u in shards}
        if not self.shards() & mine:
            example = min(self.shards())
            raise VLPError(f"data.exclude_keys {self.source}: none of its {len(self.pairs)} entries is in a training "
                           f"shard (it names {len(self.shards())} shard(s), e.g. {example}); was it written for "
                           "other shards, or did they move?")

    def spec(self) -> dict:
        """What identifies the list (checkpoints): the file, entry count and a digest of the entries."""
        digest = hashlib.blake2b(digest_size=8)
        for shard, key in sorted(self.pairs):
            digest.update(f"{key}\t{shard}\n".encode())
        for key in sorted(self.keys):
            digest.update(f"{key}\n".encode())
        return {"file": self.source, "entries": len(self), "digest": digest.hexdigest()}

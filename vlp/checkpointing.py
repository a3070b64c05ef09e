"""Checkpoint files that are never half-written, and finding the newest one to resume.

``AtomicCheckpointIO`` writes a checkpoint to a temporary file in the target folder,
flushes it to disk, then renames it over the target: a crash (even SIGKILL) mid-write
leaves the previous file intact and at worst a ``*.tmp`` file behind. `vlp fit` installs it
unless the recipe names another CheckpointIO plugin.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO



class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power loss
        finally:
            os.close(dir_fd)


def newest_checkpoint(*roots: Path) -> Path | None:
    """The checkpoint with the highest global step under ``roots`` (all versions), ties
    broken by modification time; ``None`` when there is none. Each file is read once."""
    best, best_key = None, None
    for path in sorted({p for root in roots if root.is_dir() for p in root.glob("**/*.ckpt")}):
        if path.is_symlink() and not path.exists():
            continue
        try:
            step = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", -1)
        except Exception:  # noqa: BLE001 - an unreadable file is not a candidate
            continue
        key = (step, path.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best

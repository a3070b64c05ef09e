"""Checkpoint files that are never half-written, and finding the checkpoint to resume.

``AtomicCheckpointIO`` writes a checkpoint to a temporary file in the target folder,
flushes it to disk, then renames it over the target: a crash (even SIGKILL) mid-write
leaves the previous file intact and at worst a ``*.tmp`` file behind. `vlp fit` installs it
unless the recipe names another CheckpointIO plugin. Files get the mode of any file the
process creates (``0666`` less the umask), not ``mkstemp``'s ``0600``.

``resume_checkpoint`` picks the checkpoint that ``--ckpt_path last`` resumes: the newest one
of the same run (same recipe), which must fit the model being built.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vlp.errors import VLPError


def _file_mode() -> int:
    """``0666`` less the process umask (read without changing it for good)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, _file_mode())
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


@dataclass
class Candidate:
    """A checkpoint file found under a run's folders."""

    path: Path
    step: int
    mtime: float
    recipe: str | None  # the run's recipe (``checkpoint["vlp"]["recipe"]``)
    shapes: dict[str, tuple]  # parameter and buffer name -> shape

    def describe(self) -> str:
        return f"{self.path} (step {self.step}, recipe {self.recipe or 'unknown'})"


def read_candidate(path: Path) -> Candidate | None:
    """The facts of one checkpoint file (memory-mapped, tensors not read); None when unreadable."""
    if path.is_symlink() and not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file is not a candidate
        return None
    shapes = {k: tuple(v.shape) for k, v in (ckpt.get("state_dict") or {}).items() if torch.is_tensor(v)}
    return Candidate(path, int(ckpt.get("global_step", -1)), path.stat().st_mtime,
                     (ckpt.get("vlp") or {}).get("recipe"), shapes)


def find_candidates(*roots: Path) -> list[Candidate]:
    """Every readable ``*.ckpt`` under ``roots`` (all versions), newest first (highest step,
    then latest modification). A symlink and its target count once."""
    paths = {p for root in roots if root.is_dir() for p in root.glob("**/*.ckpt")}
    seen, out = set(), []
    for path in sorted(paths):
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        found = read_candidate(path)
        if found is not None:
            out.append(found)
    return sorted(out, key=lambda c: (c.step, c.mtime), reverse=True)


def shape_mismatch(candidate: Candidate, model: torch.nn.Module) -> str | None:
    """Why the checkpoint's weights do not fit ``model`` (first difference), or None."""
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in sorted(set(mine) | set(candidate.shapes)):
        a, b = candidate.shapes.get(name), mine.get(name)
        if a != b:
            what = lambda s: "absent" if s is None else list(s)  # noqa: E731
            return f"{name}: checkpoint {what(a)}, model {what(b)}"
    return None


def resume_checkpoint(roots: list[Path], recipe: str | None, model: torch.nn.Module) -> tuple[Path | None, str]:
    """The checkpoint ``--ckpt_path last`` resumes, and a line saying what was chosen.

    The newest checkpoint (highest step) among those of the same recipe under ``roots``; None
    (start from scratch) when there is none; checkpoints of other recipes that log to the same
    folders (a variant made with ``extends`` keeps its parent's logger name) are named, never
    taken. A checkpoint of the same recipe whose weights do not fit the model (the run's sizes
    were overridden differently) is a VLPError that names it.
    """
    found = find_candidates(*roots)
    mine = [c for c in found if c.recipe == recipe]
    others = [c for c in found if c.recipe != recipe]
    where = ", ".join(map(str, roots))
    if not mine:
        note = f"--ckpt_path last: no checkpoint of recipe {recipe} under {where}; starting from scratch"
        if others:
            listed = "; ".join(c.describe() for c in others[:3]) + ("; ..." if len(others) > 3 else "")
            note += f" (ignored, other recipes: {listed})"
        return None, note
    best = mine[0]
    why = shape_mismatch(best, model)
    if why is not None:
        raise VLPError(f"--ckpt_path last: the newest checkpoint of recipe {recipe}, {best.path} (step {best.step}), "
                       f"does not fit this model ({why}); give --ckpt_path PATH, or another logger name/save_dir")
    return best.path, f"resuming from {best.path} (step {best.step})"

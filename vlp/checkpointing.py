"""Checkpoint files that are never half-written, and finding the checkpoint to resume.

``AtomicCheckpointIO`` writes a checkpoint to a temporary file in the target folder,
flushes it to disk, then renames it over the target: a crash (even SIGKILL) mid-write
leaves the previous file intact and at worst a ``*.tmp`` file behind. `vlp fit` installs it
unless the recipe names another CheckpointIO plugin. Files get the mode of any file the
process creates (``0666`` less the umask), not ``mkstemp``'s ``0600``.

``resume_checkpoint`` picks the checkpoint that ``--ckpt_path last`` resumes: the newest one
of the same run (same recipe), which must fit the model being built.

Sharded checkpoints are directories named like files (``epoch=0-step=8.ckpt/``, ``last.ckpt/``):
DeepSpeed's (``latest``, ``<tag>/*model_states.pt`` with Lightning's state, one
``*_optim_states.pt`` per process) and torch.distributed.checkpoint's, written by Lightning's
ModelParallelStrategy (FSDP2: ``meta.pt`` with Lightning's state, ``.metadata``, ``*.distcp``).
Their recipe, step and shapes are read without the shards (``read_candidate``);
``check_resume`` refuses, in one line, a checkpoint that the run's strategy cannot resume
exactly; ``consolidate`` turns one into an ordinary checkpoint dict (DeepSpeed's
``get_fp32_state_dict_from_zero_checkpoint``, torch.distributed.checkpoint's loader without a
process group), which `vlp convert`, `vlp eval` and `vlp caption` use. ``replace_path`` is how
vlp.callbacks.StepCheckpoint makes a directory appear complete or not at all.

The checkpoint's ``vlp`` section (schema ``SCHEMA`` = 3), written by VLPModule.on_save_checkpoint:

- ``schema``: 3.
- ``recipe``: the shipped recipe's name or the recipe file's absolute path (None outside `vlp fit`).
- ``model``: the model's config as `vlp fit` built it (``towers``, ``heads``, ``objectives``,
  ``share``, ``inputs``, ``step``, ``optim``; parts as ``class_path`` / ``init_args``):
  vlp.inference.load rebuilds the module from it.
- ``data``: the datamodule's config likewise (the tokenizer or text renderer, ``context_length``,
  ``image_size``, ...): vlp.inference.load takes the text and image side of the run from it.
- ``rng``: every rank's RNG states (vlp.distributed.rng_states), so a resume draws what the
  uninterrupted run drew; ``nonfinite_skipped``: steps skipped so far (vlp.step).
- ``consolidated_from``: only in `vlp convert`'s output (the directory, its kind and facts).

Older checkpoints are upgraded when read (``upgrade_checkpoint``): schema 2 kept the model and
data config in Lightning's ``hyper_parameters`` / ``datamodule_hyper_parameters`` and CoCa's
decoder inside its objective (``objectives.N.decoder.*``, now the head ``heads.decoder.*``);
schema 1 had two tower slots (``image_tower`` / ``text_tower``) and 0-d logit scales.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
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
    kind: str = "file"  # "file", "deepspeed" or "fsdp2" (a torch.distributed.checkpoint directory)
    facts: dict = field(default_factory=dict)  # deepspeed: world_size, zero_stage

    def describe(self) -> str:
        return f"{self.path} (step {self.step}, recipe {self.recipe or 'unknown'})"


# what DeepSpeed adds to the client state (Lightning's checkpoint) in its model-states file
DEEPSPEED_KEYS = frozenset({
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
    "csr_tensor_module_names", "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size",
    "ds_config", "ds_version", "ds_autotp_universal_checkpoint_metadata",
})
WRAPPER_PREFIXES = ("_forward_module.", "module.", "_orig_mod.")
FSDP2_META = "meta.pt"  # Lightning's ModelParallelStrategy: the state besides the tensors


SCHEMA = 3


def upgrade_checkpoint(checkpoint: dict) -> dict:
    """``checkpoint`` in the current schema (see the module docstring), in place: a checkpoint of the
    two-slot module (``image_tower`` / ``text_tower``) in the named-towers form, CoCa's decoder as a
    head, the model and data config in the ``vlp`` section."""
    state = checkpoint.get("state_dict") or {}
    prefixes = {"image_tower.": "towers.image.", "text_tower.": "towers.text."}
    if any(k.startswith(tuple(prefixes)) for k in state):
        checkpoint["state_dict"] = {next((new + k[len(old):] for old, new in prefixes.items() if k.startswith(old)),
                                         k): v for k, v in state.items()}
    for key, value in checkpoint.get("state_dict", {}).items():  # logit scale / bias: 0-d before, [1] now
        if key.startswith("objectives.") and key.endswith(("logit_scale", "logit_bias")) and value.ndim == 0:
            checkpoint["state_dict"][key] = value.reshape(1)
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict) and "image_tower" in hparams and "towers" not in hparams:
        hparams["towers"] = {"image": hparams.pop("image_tower"), "text": hparams.pop("text_tower")}
    _decoder_to_head(checkpoint)
    vlp = checkpoint.get("vlp")
    if not isinstance(vlp, dict):
        vlp = checkpoint["vlp"] = {}
    if vlp.get("schema", 2) < SCHEMA:
        if "model" not in vlp and isinstance(hparams, dict) and "towers" in hparams:
            vlp["model"] = hparams
        if "data" not in vlp and isinstance(checkpoint.get("datamodule_hyper_parameters"), dict):
            vlp["data"] = checkpoint["datamodule_hyper_parameters"]
        vlp["schema"] = SCHEMA
    return checkpoint


def upgrade_key(key: str) -> str:
    """A state-dict key of an older schema under its current name (as ``upgrade_checkpoint``)."""
    for old, new in (("image_tower.", "towers.image."), ("text_tower.", "towers.text.")):
        if key.startswith(old):
            return new + key[len(old):]
    return re.sub(r"^objectives\.\d+\.decoder\.", "heads.decoder.", key)


def _decoder_to_head(checkpoint: dict) -> None:
    """CoCa before named heads: the CaptioningLoss owned its decoder (``objectives.N.decoder.*``,
    ``init_args: {layers, heads, mlp_ratio}``); it is the head ``decoder`` now."""
    hparams = checkpoint.get("hyper_parameters")
    objectives = hparams.get("objectives") if isinstance(hparams, dict) else None
    if not isinstance(objectives, list):
        return
    for i, spec in enumerate(objectives):
        args = spec.get("init_args") if isinstance(spec, dict) else None
        if not (str(spec.get("class_path", "")).endswith("CaptioningLoss") and isinstance(args, dict)
                and {"layers", "heads"} & args.keys()):
            continue
        shape = {k: args.pop(k) for k in ("layers", "heads", "mlp_ratio") if k in args}
        hparams["heads"] = {**(hparams.get("heads") or {}),
                            "decoder": {"class_path": "vlp.heads.CaptionDecoder", "init_args": shape}}
        prefix = f"objectives.{i}.decoder."
        state = checkpoint.get("state_dict") or {}
        checkpoint["state_dict"] = {("heads.decoder." + k[len(prefix):] if k.startswith(prefix) else k): v
                                    for k, v in state.items()}


def sharded_kind(path) -> str | None:
    """``"deepspeed"`` or ``"fsdp2"`` (torch.distributed.checkpoint) for a sharded checkpoint
    directory, None for anything else."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "latest").is_file() or any(path.glob("*/*model_states.pt")):
        return "deepspeed"
    if (path / ".metadata").is_file() or (path / FSDP2_META).is_file():
        return "fsdp2"
    return None


def own_key(key: str) -> str:
    """A state-dict key without the wrappers' prefixes (Lightning's, DDP's, torch.compile's)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _torch_load(path: Path, mmap: bool = True):
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except RuntimeError:  # mmap needs the zip format
        return torch.load(path, map_location="cpu", weights_only=False)


def deepspeed_states_file(path: Path) -> Path:
    """The model-states file of a DeepSpeed checkpoint directory (its ``latest`` tag), which holds
    Lightning's state; FileNotFoundError when the checkpoint is incomplete."""
    tag = (path / "latest").read_text().strip()
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):  # ZeRO 1-2, 3
        if (path / tag / name).is_file():
            return path / tag / name
    raise FileNotFoundError(f"{path / tag}: no model-states file")


def _deepspeed_facts(path: Path) -> tuple[dict, dict[str, tuple], dict]:
    """(Lightning's state, shapes, facts) of a DeepSpeed directory; the module's weights are
    memory-mapped, not read. Raises when incomplete (an optimiser shard missing)."""
    states_file = deepspeed_states_file(path)
    state = _torch_load(states_file)
    world = int(state.get("dp_world_size") or 1)
    stage = int(((state.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0))
    if stage > 0 and len(list(states_file.parent.glob("*_optim_states.pt"))) < world:
        raise FileNotFoundError(f"{states_file.parent}: fewer optimiser shards than its {world} processes")
    shapes = {own_key(k): tuple(v.shape) for k, v in (state.get("module") or {}).items() if torch.is_tensor(v)}
    for group in ("param_shapes", "frozen_param_shapes"):
        found = state.get(group) or {}
        for part in (found if isinstance(found, list) else [found]):
            shapes.update({own_key(k): tuple(v) for k, v in (part or {}).items()})
    client = {k: v for k, v in state.items() if k not in DEEPSPEED_KEYS}
    return client, shapes, {"world_size": world, "zero_stage": stage}


def _fsdp2_facts(path: Path) -> tuple[dict, dict[str, tuple], dict]:
    """(Lightning's state, shapes from the checkpoint's metadata, facts) of a
    torch.distributed.checkpoint directory; no shard is read."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = _torch_load(path / FSDP2_META, mmap=False)
    metadata = FileSystemReader(str(path)).read_metadata()
    shapes = {own_key(k[len("state_dict."):]): tuple(v.size) for k, v in metadata.state_dict_metadata.items()
              if k.startswith("state_dict.") and hasattr(v, "size")}
    ranks = len(list(path.glob("*.distcp")))
    return meta, shapes, {"world_size": ranks}


def read_client_state(path) -> tuple[str, dict, dict[str, tuple], dict]:
    """(kind, Lightning's state without the tensors, shapes, facts) of a checkpoint file or
    sharded directory; raises when it cannot be read."""
    path = Path(path)
    kind = sharded_kind(path)
    if kind == "deepspeed":
        return (kind, *_deepspeed_facts(path))
    if kind == "fsdp2":
        return (kind, *_fsdp2_facts(path))
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, neither a DeepSpeed nor a torch.distributed.checkpoint one")
    ckpt = _torch_load(path)
    shapes = {k: tuple(v.shape) for k, v in (ckpt.get("state_dict") or {}).items() if torch.is_tensor(v)}
    return "file", ckpt, shapes, {}


def read_candidate(path: Path) -> Candidate | None:
    """The facts of one checkpoint file or sharded directory (memory-mapped, tensors not read);
    None when unreadable or incomplete, or when it cannot resume training (weights only, e.g.
    the output of `vlp convert`)."""
    if path.is_symlink() and not path.exists():
        return None
    try:
        kind, ckpt, shapes, facts = read_client_state(path)
    except Exception:  # noqa: BLE001 - an unreadable file is not a candidate
        return None
    if not isinstance(ckpt, dict) or (kind == "file" and "optimizer_states" not in ckpt):
        return None
    shapes = {upgrade_key(k): v for k, v in shapes.items()}
    return Candidate(path, int(ckpt.get("global_step", -1)), path.stat().st_mtime,
                     (ckpt.get("vlp") or {}).get("recipe"), shapes, kind, facts)


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


# ---- sharded checkpoints: which strategy resumes them, one file out of them


def _strategy_kind(strategy) -> str:
    from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy

    if isinstance(strategy, DeepSpeedStrategy):
        return "deepspeed"
    if isinstance(strategy, ModelParallelStrategy):
        return "fsdp2"
    return "other"


def saves_directories(strategy) -> bool:
    """Whether ``strategy`` writes its checkpoints as directories (DeepSpeed; FSDP2 with
    distributed checkpoints; Lightning's FSDP with sharded state dicts)."""
    return (_strategy_kind(strategy) == "deepspeed" or bool(getattr(strategy, "_save_distributed_checkpoint", False))
            or getattr(strategy, "_state_dict_type", None) == "sharded")


def _zero_stage(strategy) -> int:
    return int(((getattr(strategy, "config", None) or {}).get("zero_optimization") or {}).get("stage", 0))


def check_resume(path, strategy, world_size: int) -> None:
    """A VLPError (one line, what to do) when ``strategy`` on ``world_size`` processes cannot
    resume the checkpoint at ``path`` exactly: a DeepSpeed directory under another strategy, on
    another number of processes (DeepSpeed's ZeRO shards are per process) or across ZeRO-3 and
    ZeRO-1/2 (other layouts); an FSDP2 directory under a strategy other than
    ModelParallelStrategy; a single-file checkpoint under DeepSpeed (its optimiser state has no
    ZeRO layout). FSDP2 directories are resharded by torch.distributed.checkpoint, so another
    number of processes loads (but only the same number replays the same batches and random
    numbers)."""
    path = Path(path)
    mine = _strategy_kind(strategy)
    kind = sharded_kind(path)
    convert = f"`vlp convert {path} OUT.ckpt` makes one file of its weights (for vlp eval / caption)"
    if kind == "deepspeed":
        try:
            _, _, facts = _deepspeed_facts(path)
        except Exception as e:  # noqa: BLE001
            raise VLPError(f"--ckpt_path {path}: an incomplete or unreadable DeepSpeed checkpoint ({e})") from None
        stage, world = facts["zero_stage"], facts["world_size"]
        wrote = f"DeepSpeed ZeRO-{stage} on {world} process{'es' if world > 1 else ''}"
        if mine != "deepspeed":
            raise VLPError(f"--ckpt_path {path}: a {wrote} checkpoint (a directory); resume it with "
                           f"--trainer.strategy vlp_deepspeed_stage_{stage} on {world} process{'es' if world > 1 else ''}; "
                           f"{convert}")
        if world != world_size:
            raise VLPError(f"--ckpt_path {path}: a {wrote} checkpoint; this run has {world_size} "
                           f"process{'es' if world_size > 1 else ''}, and ZeRO's optimiser shards are per process: "
                           f"resume it on {world}; {convert}")
        if (stage == 3) != (_zero_stage(strategy) == 3):
            raise VLPError(f"--ckpt_path {path}: a {wrote} checkpoint; this run uses ZeRO-{_zero_stage(strategy)}, "
                           f"whose shards are laid out differently: resume it with vlp_deepspeed_stage_{stage}; "
                           f"{convert}")
    elif kind == "fsdp2":
        if mine != "fsdp2":
            raise VLPError(f"--ckpt_path {path}: an FSDP2 (torch.distributed.checkpoint) checkpoint, a directory; "
                           "resume it with --trainer.strategy ModelParallelStrategy (as the run that wrote it); "
                           f"{convert}")
    elif path.is_dir():
        raise VLPError(f"--ckpt_path {path}: a directory, but neither a DeepSpeed nor an FSDP2 checkpoint")
    elif mine == "deepspeed":
        raise VLPError(f"--ckpt_path {path}: a single-file checkpoint cannot be resumed under DeepSpeed (its "
                       "optimiser state has no ZeRO layout); resume it with the strategy that wrote it")


def _zero_state_dict(path: Path) -> dict:
    """DeepSpeed's own consolidation (all ZeRO stages): fp32 weights out of the shards."""
    import contextlib
    import io

    try:
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,
        )
    except ImportError:
        raise VLPError(f"{path} is a DeepSpeed checkpoint; reading it needs DeepSpeed: pip install -e '.[deepspeed]'") \
            from None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress
        return get_fp32_state_dict_from_zero_checkpoint(str(path))


def _dcp_state_dict(path: Path) -> dict:
    """torch.distributed.checkpoint's own loader without a process group (as its
    ``dcp_to_torch_save``), for the model's entry only: whole tensors."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    loaded: dict = {}
    _load_state_dict(loaded, storage_reader=FileSystemReader(str(path)),
                     planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}), no_dist=True)
    return loaded["state_dict"]


def consolidate(path) -> dict:
    """An ordinary Lightning checkpoint dict (weights only: no optimiser state) out of a sharded
    checkpoint directory: Lightning's state (hyper-parameters, the datamodule's, vlp's metadata,
    the step) and the whole fp32 weights under the module's own names."""
    path = Path(path)
    kind = sharded_kind(path)
    if kind is None:
        raise VLPError(f"{path} is not a sharded checkpoint (a DeepSpeed or FSDP2 checkpoint directory)")
    try:
        _, ckpt, _, facts = read_client_state(path)
        weights = _zero_state_dict(path) if kind == "deepspeed" else _dcp_state_dict(path)
    except VLPError:
        raise
    except Exception as e:  # noqa: BLE001 - an incomplete directory is the same user error
        raise VLPError(f"checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None
    ckpt = {k: v for k, v in ckpt.items() if k not in ("optimizer_states", "state_dict")}
    ckpt["state_dict"] = {own_key(k): v.detach().clone() if torch.is_tensor(v) else v for k, v in weights.items()}
    ckpt["vlp"] = {**(ckpt.get("vlp") or {}), "consolidated_from": {"path": str(path.resolve()), "kind": kind,
                                                                     **facts}}
    return ckpt


def replace_path(src, dst) -> None:
    """Move ``src`` (a finished checkpoint file or directory) to ``dst``, replacing what is there:
    at every moment ``dst`` is either the old checkpoint, absent, or the new one complete."""
    src, dst = Path(src), Path(dst)
    old = dst.with_name(f".{dst.name}.old")
    remove_path(old)
    if dst.exists() or dst.is_symlink():
        os.replace(dst, old)
    os.replace(src, dst)
    dir_fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    remove_path(old)


def remove_path(path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)

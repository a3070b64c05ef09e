"""`vlp convert`: one ordinary checkpoint file out of a sharded checkpoint directory (the
command line: vlp.commands.convert).

    vlp convert runs/clip_tiny/version_0/checkpoints/last.ckpt clip_tiny_last.ckpt

The input is what DeepSpeed (``vlp_deepspeed_*``) or FSDP2 (Lightning's ModelParallelStrategy)
wrote: a directory named like a checkpoint. The output is a Lightning checkpoint file with the
whole fp32 weights under the module's own names (consolidated by DeepSpeed's
``get_fp32_state_dict_from_zero_checkpoint`` or torch.distributed.checkpoint's loader, see
vlp.checkpointing.consolidate), and the checkpoint's ``vlp`` section in the current schema (the
run's model and data config, recipe, step): vlp.inference.load (`vlp eval`, `vlp caption`, `vlp
overlap`) loads it. It holds no optimiser state, so it does not resume training (`--ckpt_path
last` passes it by); resume from the directory itself. vlp.inference also reads a directory
directly (consolidated in memory).
"""

from __future__ import annotations

from pathlib import Path

from vlp.errors import VLPError


def convert(source, out, overwrite: bool = False) -> dict:
    """Write the consolidated checkpoint of ``source`` to ``out`` (atomically); returns it."""
    from vlp.checkpointing import AtomicCheckpointIO, sharded_kind
    from vlp.inference import read_checkpoint

    source, out = Path(source), Path(out)
    if not source.exists():
        raise VLPError(f"convert: {source} does not exist")
    if sharded_kind(source) is None:
        what = "already one checkpoint file" if source.is_file() else "neither a DeepSpeed nor an FSDP2 checkpoint"
        raise VLPError(f"convert: {source} is {what}; give a sharded checkpoint directory")
    if out.is_dir():
        raise VLPError(f"convert: {out} is a directory; give the file to write")
    if out.exists() and not overwrite:
        raise VLPError(f"convert: {out} exists (--overwrite replaces it)")
    ckpt = read_checkpoint(source)  # consolidated, in the current schema (what vlp.inference.load reads)
    AtomicCheckpointIO().save_checkpoint(ckpt, out)
    return ckpt

"""`vlp convert`: one checkpoint file out of a DeepSpeed / FSDP2 checkpoint directory.

    vlp convert runs/clip_tiny/version_0/checkpoints/last.ckpt clip_tiny_last.ckpt

What it writes, and what reads it: vlp.convert.
"""

from __future__ import annotations

import argparse

from vlp.commands._parser import CommandParser

HELP = "one checkpoint file out of a DeepSpeed / FSDP2 checkpoint directory: vlp convert DIR OUT.ckpt"


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="vlp convert", description="Consolidate a sharded (DeepSpeed / FSDP2) checkpoint directory "
                "into one checkpoint file for vlp eval, vlp caption and vlp.inference.load.")
    p.add_argument("checkpoint", metavar="CKPT_DIR", help="a DeepSpeed or FSDP2 checkpoint directory (e.g. last.ckpt/)")
    p.add_argument("out", metavar="OUT.ckpt", help="the checkpoint file to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


def main(argv: list[str]) -> dict:
    """The consolidated checkpoint, as written."""
    import torch

    from vlp.convert import convert

    args = build_parser().parse_args(argv)
    ckpt = convert(args.checkpoint, args.out, args.overwrite)
    state = ckpt["state_dict"]
    numel = sum(v.numel() for v in state.values() if torch.is_tensor(v))
    facts = ckpt["vlp"]["consolidated_from"]
    world = facts.get("world_size")
    processes = f", {world} process{'es' if world > 1 else ''}" if world else ""
    print(f"{args.checkpoint} ({facts['kind']}{processes}, step {ckpt.get('global_step')}, "
          f"recipe {ckpt['vlp'].get('recipe') or 'unknown'}) -> {args.out}: {len(state)} tensors, "
          f"{numel / 1e6:.2f}M values")
    return ckpt

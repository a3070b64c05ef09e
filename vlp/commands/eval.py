"""`vlp eval`: evaluate checkpoints on tasks, write one JSON per (checkpoint, task), merge tables.

    vlp eval --ckpt runs/clip_tiny/version_0/checkpoints/last.ckpt --task emoji_google_test_retrieval
    vlp eval --ckpt A.ckpt --ckpt B.ckpt --task 'emoji_*' --out eval_results
    vlp eval --table eval_results            # one markdown + CSV table across checkpoints
    vlp eval --list                          # the built-in tasks

The work (evaluating, tables) is vlp.eval.runner's; loading, vlp.inference's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlp.commands._parser import CommandParser

HELP = "evaluate checkpoints on eval tasks: vlp eval --ckpt PATH --task NAME (more: vlp eval --help)"


def build_parser() -> argparse.ArgumentParser:
    import torch

    p = CommandParser(prog="vlp eval", description="Evaluate vlp checkpoints on eval tasks.")
    p.add_argument("--ckpt", action="append", default=[], help="checkpoint path (repeatable)")
    p.add_argument("--task", action="append", default=[],
                   help="built-in task name, shell pattern over them ('emoji_*'), or task YAML path (repeatable)")
    p.add_argument("--out", default="eval_results", help="folder for the JSON results (default eval_results)")
    p.add_argument("--name", help="label of the checkpoint in results (default: from its path)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_workers", type=int, default=0, help="data workers for decoding images")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--table", metavar="DIR", help="merge the result JSONs under DIR into DIR/results.{md,csv}")
    p.add_argument("--list", action="store_true", help="list the built-in tasks")
    return p


def main(argv: list[str]) -> list[dict] | None:
    """The result records of the evaluations (None for ``--list`` and ``--table``)."""
    from vlp.eval.runner import evaluate, merge_table, records_table
    from vlp.eval.tasks import builtin_tasks, load_task

    args = build_parser().parse_args(argv)
    if args.list:
        for name in builtin_tasks():
            t = load_task(name)
            print(f"{name:<42} {t.kind}")
        return None
    if args.table:
        markdown, _ = merge_table(args.table)
        print(markdown, end="")
        print(f"written: {Path(args.table) / 'results.md'}, {Path(args.table) / 'results.csv'}")
        return None
    results = evaluate(args)
    print()
    print(records_table(results)[0], end="")
    return results

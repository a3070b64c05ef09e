"""`vlp overlap`: near-duplicates between training images and eval images (CLIP paper, section 5).

    vlp overlap --train 'builtin:emoji/google/train-*.tar' --eval 'emoji_*'
    vlp overlap --train '/data/laion/{00000..00099}.tar' --eval my_task.yaml --eval '/data/val/*.tar' \\
        --ckpt runs/clip_tiny/version_0/checkpoints/last.ckpt --out overlap --write-exclusions exclude.txt

The method, its thresholds and the report: vlp.overlap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlp.commands._parser import CommandParser
from vlp.errors import VLPError

HELP = "near-duplicates of eval images in training data: vlp overlap --train SHARDS --eval TASK (more: --help)"


def build_parser() -> argparse.ArgumentParser:
    import torch

    from vlp.overlap import COSINE_THRESHOLD, PHASH_THRESHOLD

    p = CommandParser(prog="vlp overlap", description="Near-duplicates between training and eval images "
                "(perceptual hash; with --ckpt also image embeddings), per eval set.")
    p.add_argument("--train", required=True, metavar="SHARDS",
                   help="the training shards (path, brace or glob pattern, builtin:..., a::b)")
    p.add_argument("--eval", action="append", default=[], metavar="TASK_OR_SHARDS",
                   help="a built-in task, a pattern over them ('emoji_*'), a task YAML, or shards (repeatable)")
    p.add_argument("--threshold", type=int, default=PHASH_THRESHOLD,
                   help=f"largest pHash Hamming distance (of 64 bits) of a near-duplicate (default {PHASH_THRESHOLD})")
    p.add_argument("--ckpt", help="also compare the image embeddings of this checkpoint")
    p.add_argument("--cosine", type=float, default=COSINE_THRESHOLD,
                   help=f"smallest embedding cosine of a near-duplicate, with --ckpt (default {COSINE_THRESHOLD})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=256, help="images per forward pass, with --ckpt")
    p.add_argument("--examples", type=int, default=5, help="matches listed per eval set (default 5)")
    p.add_argument("--out", metavar="DIR", help="write DIR/overlap.json and DIR/overlap.md")
    p.add_argument("--write-exclusions", metavar="FILE",
                   help="write the matched training samples (KEY<TAB>SHARD lines) for data.exclude_keys")
    return p


def main(argv: list[str]) -> dict:
    """The overlap report (as written to overlap.json)."""
    from vlp.overlap import markdown_report, overlap, table

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise VLPError(f"overlap: --batch_size must be >= 1, got {args.batch_size}")
    if args.out and Path(args.out).is_file():  # fail before the work, not after it
        raise VLPError(f"overlap: --out {args.out} is a file; give a folder")
    if args.write_exclusions and Path(args.write_exclusions).is_dir():
        raise VLPError(f"overlap: --write-exclusions {args.write_exclusions} is a folder; give a file")
    report, lines = overlap(args.train, args.eval, args.threshold, args.ckpt, args.cosine, args.device,
                            args.batch_size, args.examples)
    t = report["train"]
    print(f"training: {t['spec']}: {t['images']} images in {t['shards']} shards"
          + (f" (skipped {t['skipped']})" if t["skipped"] else ""))
    print(table(report), end="")
    print(f"training samples matched: {t['matched']} ({report['seconds']:.1f} s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "overlap.json").write_text(json.dumps(report, indent=2))
        (out / "overlap.md").write_text(markdown_report(report))
        print(f"written: {out / 'overlap.json'}, {out / 'overlap.md'}")
    if args.write_exclusions:
        path = Path(args.write_exclusions)
        path.parent.mkdir(parents=True, exist_ok=True)
        m = report["method"]
        header = ["# vlp overlap: training samples near-duplicate to eval images (data.exclude_keys FILE)",
                  f"# train {t['spec']}; eval {', '.join(e['name'] for e in report['eval_sets'])}",
                  (f"# pHash distance <= {m['phash']['threshold']}"
                   + (f", embedding cosine >= {m['embedding']['cosine']}" if m["embedding"] else "")),
                  "# KEY<TAB>SHARD"]
        path.write_text("\n".join(header + lines) + "\n")
        print(f"written: {path} ({len(lines)} training samples)")
    return report

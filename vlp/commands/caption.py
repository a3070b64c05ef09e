"""`vlp caption`: captions of images or shards from a checkpoint with a captioning objective (CoCa).

    vlp caption --ckpt runs/coca_tiny/version_0/checkpoints/last.ckpt face.png cat.jpg
    vlp caption --ckpt last.ckpt 'builtin:emoji/twitter/test-*.tar' --strategy beam --out captions.jsonl

Prints ``SOURCE<TAB>CAPTION`` per image (SOURCE: the file, or ``SHARD:KEY``); ``--out FILE``
writes JSON lines ``{"source", "caption", "score"}`` instead.

The images are read by vlp.caption.read_inputs, the captions written by vlp.generation.Captioner.
"""

from __future__ import annotations

import argparse
import json

from vlp.commands._parser import CommandParser
from vlp.errors import VLPError

HELP = ("caption images with a CoCa checkpoint: vlp caption --ckpt PATH IMAGE_OR_SHARDS... "
        "(more: vlp caption --help)")


def build_parser() -> argparse.ArgumentParser:
    import torch

    p = CommandParser(prog="vlp caption", description="Caption images with a vlp checkpoint that has a "
                                                      "captioning objective (CoCa recipes).")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_SHARDS",
                   help="image files, or shard specs (path, brace / glob pattern, builtin:emoji/...)")
    p.add_argument("--ckpt", required=True, help="checkpoint of `vlp fit` (a coca_* recipe)")
    p.add_argument("--strategy", choices=("greedy", "beam", "sample"), default="beam")
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--length_penalty", type=float, default=1.0, help="beam ranking: sum log p / length ** this")
    p.add_argument("--max_length", type=int, default=None,
                   help="most tokens after the start token (default: the text tower's context_length - 1)")
    p.add_argument("--min_length", type=int, default=0, help="fewest caption tokens before the end token")
    p.add_argument("--top_k", type=int, default=0, help="sample: keep the k most likely tokens (0: all)")
    p.add_argument("--top_p", type=float, default=1.0, help="sample: keep the most likely tokens up to this mass")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="the sampling seed")
    p.add_argument("--no_cache", action="store_true", help="recompute every position each step (slow; for checks)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="write JSON lines here instead of printing")
    return p


def main(argv: list[str]) -> list[dict]:
    """The captions, as records ``{"source", "caption", "score"}``."""
    import torch

    from vlp.caption import read_inputs
    from vlp.inference import load
    from vlp.generation import Captioner

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise VLPError("caption: --batch_size must be >= 1")
    loaded = load(args.ckpt, args.device)
    module, data = loaded.module, loaded.data
    captioner = Captioner(module)
    transform = data.transform()
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    settings = {"strategy": args.strategy, "max_length": args.max_length, "min_length": args.min_length,
                "num_beams": args.num_beams, "length_penalty": args.length_penalty, "top_k": args.top_k,
                "top_p": args.top_p, "temperature": args.temperature,
                "repetition_penalty": args.repetition_penalty, "use_cache": not args.no_cache,
                "generator": generator}
    records: list[dict] = []
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - closed below
    try:
        batch: list[tuple[str, object]] = []

        def flush() -> None:
            images = torch.stack([transform(im) for _, im in batch]).to(args.device)
            result = captioner.generate(images, **settings)
            for (source, _), text, score in zip(batch, data.tokenizer.decode(result.ids), result.scores.tolist()):
                record = {"source": source, "caption": text, "score": round(score, 4)}
                records.append(record)
                if out is not None:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    print(f"{source}\t{text}", flush=True)
            batch.clear()

        for item in read_inputs(args.inputs):
            batch.append(item)
            if len(batch) == args.batch_size:
                flush()
        if batch:
            flush()
    finally:
        if out is not None:
            out.close()
    if out is not None:
        print(f"{len(records)} captions -> {args.out}")
    return records

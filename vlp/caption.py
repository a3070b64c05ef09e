"""`vlp caption`: captions of images or shards from a checkpoint with a captioning objective (CoCa).

    vlp caption --ckpt runs/coca_tiny/version_0/checkpoints/last.ckpt face.png cat.jpg
    vlp caption --ckpt last.ckpt 'builtin:emoji/twitter/test-*.tar' --strategy beam --out captions.jsonl

Prints ``SOURCE<TAB>CAPTION`` per image (SOURCE: the file, or ``SHARD:KEY``); ``--out FILE``
writes JSON lines ``{"source", "caption", "score"}`` instead.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from vlp.errors import VLPError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise VLPError(f"caption: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vlp caption", description="Caption images with a vlp checkpoint that has a captioning "
                                                "objective (CoCa recipes).")
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


def read_inputs(inputs: list[str]) -> Iterator[tuple[str, object]]:
    """``(source, PIL image)`` for every image file and every sample of every shard, in order."""
    from vlp.data.decode import BadSample, decode_image, image_member
    from vlp.data.shards import expand_shards
    from vlp.data.tar_reader import ShardError, tar_samples

    for spec in inputs:
        if Path(spec).suffix.lower() in IMAGE_SUFFIXES:
            if not Path(spec).is_file():
                raise VLPError(f"caption: image file not found: {spec}")
            try:
                yield spec, decode_image(Path(spec).read_bytes())
            except BadSample as bad:
                raise VLPError(f"caption: {spec}: {bad.reason}") from None
            continue
        for url in expand_shards(spec):
            try:
                for sample in tar_samples(url):
                    source = f"{url}:{sample['__key__']}"
                    try:
                        yield source, decode_image(sample[image_member(sample)])
                    except BadSample as bad:
                        raise VLPError(f"caption: {source}: {bad.reason}") from None
            except ShardError as e:
                raise VLPError(f"caption: shard unreadable: {e}") from None


def caption_main(argv: list[str]) -> list[dict]:
    from vlp.eval.command import load_for_eval
    from vlp.generation import Captioner

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise VLPError("caption: --batch_size must be >= 1")
    module, data, _ = load_for_eval(args.ckpt, args.device)
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

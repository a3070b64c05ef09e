"""The images that `vlp caption` captions (its command line: vlp.commands.caption): image files
and the samples of shards, decoded as training decodes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vlp.errors import VLPError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


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

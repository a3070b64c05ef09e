"""Tiny eval shards for the eval tests: sample ``i`` is a 16-px image of a known colour, a caption
``caption i``, a label ``c{i % 3}``, labels in two languages and two tags.

Only tests import this module.
"""

from __future__ import annotations

import io
import json

from PIL import Image

from vlp.data.shard_writer import write_shard


def eval_image(i: int) -> Image.Image:
    """The image of sample ``i`` (a test can embed it by hand)."""
    return Image.new("RGB", (16, 16), (20 * i % 255, 40, 200))


def eval_shard(path, n: int, captions: bool = True) -> str:
    """Write ``n`` samples to the shard ``path``: png (``eval_image(i)``), txt ``caption i``
    (unless ``captions`` is false) and json ``{"label": "c{i % 3}", "labels": {"en": "thing i",
    "de": "ding i"}, "tags": ["t{i}", "x"]}``; return the path as a string."""
    samples = []
    for i in range(n):
        buf = io.BytesIO()
        eval_image(i).save(buf, format="PNG")
        meta = {"label": f"c{i % 3}", "labels": {"en": f"thing {i}", "de": f"ding {i}"}, "tags": [f"t{i}", "x"]}
        sample = {"png": buf.getvalue(), "json": json.dumps(meta).encode()}
        if captions:
            sample["txt"] = f"caption {i}".encode()
        samples.append((f"{i:05d}", sample))
    write_shard(path, samples)
    return str(path)

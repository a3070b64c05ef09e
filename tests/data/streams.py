"""Small synthetic training streams for the data tests: sources of tiny PNG shards, a DataModule
over them, and the in-process resume check (as a checkpoint does it: loader_state ->
load_loader_state) that the mixing, hold-out and exclusion tests share."""

import io
import json

import torch
from PIL import Image

from vlp.data.datamodule import VLPDataModule
from vlp.data.shard_writer import write_shard


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (i % 256, (7 * i) % 256, 50)).save(buf, format="PNG")
    return buf.getvalue()


def source(folder, prefix: str, shards: int, per_shard: int) -> str:
    """``shards`` shards of ``per_shard`` samples captioned ``PREFIX N``, with json tags."""
    for s in range(shards):
        write_shard(folder / prefix / f"{s:03d}.tar", [
            (f"{prefix}{i:05d}", {"png": png(i), "txt": f"{prefix} {i}".encode(),
                                  "json": json.dumps({"tags": [f"{prefix} {i} x", f"{prefix} {i} y"]}).encode()})
            for i in range(s * per_shard, (s + 1) * per_shard)])
    return str(folder / prefix / "*.tar")


def datamodule(train_shards, **kw) -> VLPDataModule:
    args = {"batch_size": 20, "num_workers": 0, "image_size": 16, "context_length": 8, "seed": 1, "shuffle_buffer": 50}
    return VLPDataModule(train_shards=train_shards, **{**args, **kw})


def collect(dm, loader=None, n=None) -> list[dict]:
    """Batches as Lightning sees them (through on_before_batch_transfer)."""
    out = []
    for batch in loader if loader is not None else dm.train_dataloader():
        out.append(dm.on_before_batch_transfer(batch, 0))
        if n is not None and len(out) == n:
            break
    return out


def two_epochs(spec, kw: dict, stop: int | None = None, state: dict | None = None):
    """(caption, image) batches of two epochs from a fresh DataModule (resumed from ``state`` if
    given), up to ``stop`` batches; returns them, the loader state at the stop (None at the end)
    and the DataModule."""
    dm = datamodule(spec, **kw)
    loader = dm.train_dataloader()
    if state is not None:
        dm.load_loader_state(state)
    got = []
    for _ in range(2):
        for batch in loader:
            batch = dm.on_before_batch_transfer(batch, 0)
            got.append((batch["caption"], batch["image"]))
            if stop is not None and len(got) == stop:
                return got, dm.loader_state(), dm
    return got, None, dm


def assert_resumes_exactly(spec, kw: dict, stops: tuple[int, ...]):
    """Stopped after each of ``stops`` batches and resumed, the stream gives exactly the batches
    (captions and pixels) of an uninterrupted run, and the counts carry over. Returns the
    uninterrupted batches, its DataModule and the saved state of each stop."""
    full, _, whole = two_epochs(spec, kw)
    states = []
    for stop in stops:
        head, state, _ = two_epochs(spec, kw, stop=stop)
        tail, _, resumed = two_epochs(spec, kw, stop=len(full) - stop, state=state)
        got = head + tail
        assert [c for c, _ in got] == [c for c, _ in full]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(got, full))
        assert resumed.stats == whole.stats  # the counts (per source, held out, excluded) carried over
        states.append(state)
    return full, whole, states

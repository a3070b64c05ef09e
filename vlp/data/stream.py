"""An iterable of ready batches read from webdataset shards, built in the data workers.

Shards are split across (rank, worker) pairs; each worker reads its shards, shuffles
samples in a buffer, decodes images, batches, and tokenises the batch's captions at
once. In training every worker yields exactly ``batches_per_worker`` full batches
(cycling its shards when needed), so all ranks take the same number of steps.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers) of the calling process."""
    return wds.utils.pytorch_worker_info()


class SampleDecoder:
    """Raw webdataset sample -> (image tensor, caption, {meta fields})."""

    def __init__(self, transform: Callable, caption_key: str = "txt", meta_fields: tuple[str, ...] = ()):
        self.transform = transform
        self.caption_key = caption_key
        self.meta_fields = meta_fields

    def __call__(self, sample: dict) -> tuple[torch.Tensor, str, dict]:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image")
        with Image.open(io.BytesIO(sample[ext])) as im:
            image = self.transform(im.convert("RGB"))
        caption = sample[self.caption_key].decode("utf-8")
        meta = {}
        if self.meta_fields:
            info = json.loads(sample["json"])
            meta = {f: info[f] for f in self.meta_fields}
        return image, caption, meta


def buffer_shuffle(items, size: int, rng: random.Random):
    """Shuffle a stream through a buffer of ``size`` items (raw samples, before decoding)."""
    buf = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


class ShardStream(IterableDataset):
    """Batches of ``{"image": [B,3,H,W], "text": [B,L], "caption": list, meta...}``.

    Args:
        shards: local or remote shard urls.
        decode: per-sample decoder (see SampleDecoder).
        tokenizer: list[str] -> LongTensor [B, L].
        batch_size: samples per batch.
        train: shuffle, drop partial batches, cycle to ``batches_per_worker``.
        batches_per_worker: training epoch length of each worker.
        shuffle_buffer: sample shuffle buffer size (train only).
        resampled: draw shards with replacement (infinite stream) instead of splitting them.
    """

    def __init__(self, shards: list[str], decode: SampleDecoder, tokenizer: Callable, batch_size: int,
                 train: bool, batches_per_worker: int = 0, shuffle_buffer: int = 1000,
                 resampled: bool = False):
        self.shards = shards
        self.decode = decode
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.train = train
        self.batches_per_worker = batches_per_worker
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.length: int | None = None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown")
        return self.length

    def _passes(self, rng: random.Random) -> Iterator[Iterator[str]]:
        """Passes over this worker's shards: one in eval, endless in training
        (each reshuffled), one endless draw with replacement when resampled."""
        rank, world, worker, workers = worker_info()
        if self.resampled:
            yield (rng.choice(self.shards) for _ in iter(int, 1))
            return
        mine = self.shards[rank * workers + worker :: world * workers]
        if not self.train:
            yield iter(mine)
            return
        while True:
            yield iter(rng.sample(mine, len(mine)))

    def _samples(self, rng: random.Random) -> Iterator[dict]:
        for urls in self._passes(rng):
            samples = wds.tarfile_to_samples()({"url": u} for u in urls)
            if self.train and self.shuffle_buffer > 1:
                # the buffer is flushed at the end of each pass: a pass is a permutation
                samples = buffer_shuffle(samples, self.shuffle_buffer, rng)
            yield from samples

    def _batch(self, items: list) -> dict:
        images, captions, metas = zip(*items)
        batch = {"image": torch.stack(images), "text": self.tokenizer(list(captions)), "caption": list(captions)}
        for field in self.decode.meta_fields:
            batch[field] = [m[field] for m in metas]
        return batch

    def __iter__(self) -> Iterator[dict]:
        rank = worker_info()[0]
        # torch's generator is seeded per worker and per epoch by the DataLoader (and by
        # seed_everything), so the shuffle is reproducible yet new each epoch.
        rng = random.Random(int(torch.randint(2**62, ())) + 7919 * rank)
        items, produced = [], 0
        for sample in self._samples(rng):
            items.append(self.decode(sample))
            if len(items) == self.batch_size:
                yield self._batch(items)
                items, produced = [], produced + 1
                if self.train and produced >= self.batches_per_worker:
                    return
        if items and not self.train:
            yield self._batch(items)

"""The training stream: batches read from webdataset shards, built in the data workers.

Shards are split across (rank, worker) pairs; each worker reads its shards, shuffles
samples in a buffer, decodes images, batches, and tokenises the batch's captions at
once. Every worker yields exactly ``batches_per_worker`` full batches per epoch (cycling
its shards when needed), so all ranks take the same number of steps.

Determinism and resume: a worker's shard order and shuffle come from
``(seed, epoch, rank, worker)`` and the augmentation of its n-th batch from
``(seed, epoch, rank, worker, n)``, never from the process RNG. Each batch reports
where its worker stands (raw samples read, batches made); to resume, a worker skips
that many raw samples without decoding them and the workers are rotated so that the
DataLoader's round robin continues with the worker that was next. The stream after a
resume is therefore the stream of the uninterrupted run.

Bad data (see ``SampleDecoder``): samples are skipped and counted by reason, or
converted and counted; an unreadable shard is skipped, counted and named.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from vlp.data.decode import BadSample, decode_image, image_member
from vlp.data.tar_reader import ShardError, tar_samples
from vlp.errors import VLPError

SKIP_REASONS = ("no_image", "corrupt_image", "too_many_pixels", "missing_caption", "empty_caption",
                "caption_not_utf8")


def worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers) of the calling process."""
    return wds.utils.pytorch_worker_info()


def stable_seed(*parts) -> int:
    """A seed from ``parts`` that is the same in every process (unlike ``hash``)."""
    return random.Random("-".join(map(str, parts))).getrandbits(63)


class SampleDecoder:
    """Raw webdataset sample -> (image tensor, caption); bad samples raise ``BadSample``.

    Handling (``counts`` receives the converted ones):
        - no image member, an image PIL cannot decode (corrupt or truncated): skipped;
        - an image over ``max_pixels`` (decompression bomb), judged from its header before
          decoding: skipped;
        - no caption member, an empty or blank caption, a caption that is not UTF-8: skipped;
          with ``caption_keys`` (one caption drawn per sample, uniformly from those fields the
          sample has: members such as ``txt`` or json paths such as ``labels.de``; the draw
          comes from torch's RNG, which the stream seeds per batch), a sample with none of them
          is skipped as ``missing_caption``;
        - RGBA / LA / palette-with-transparency images: composited on white (the colour the
          emoji data are drawn on), counted ``alpha_on_white``; CMYK, palette, grey and other
          modes: converted to RGB, counted ``mode_to_rgb``.
    """

    def __init__(self, transform: Callable, caption_key: str = "txt", max_pixels: int = 89_478_485,
                 view_transform: Callable | None = None, caption_keys: list[str] | None = None):
        self.transform = transform
        self.caption_key = caption_key
        self.caption_keys = list(caption_keys) if caption_keys else None
        self.max_pixels = max_pixels
        self.view_transform = view_transform  # SLIP: two extra augmented views per image

    def caption(self, sample: dict) -> str:
        raw = self._drawn(sample) if self.caption_keys else sample.get(self.caption_key)
        if raw is None:
            raise BadSample("missing_caption")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadSample("caption_not_utf8") from None
        if not text.strip():
            raise BadSample("empty_caption")
        return text

    def _drawn(self, sample: dict) -> bytes | None:
        """One of the ``caption_keys`` fields the sample has (members first, then json paths),
        drawn uniformly; None if it has none."""
        info = None
        found = []
        for key in self.caption_keys:
            if key in sample and key != "json":
                found.append(sample[key])
                continue
            if info is None:
                try:
                    info = json.loads(sample["json"]) if "json" in sample else {}
                except (ValueError, UnicodeDecodeError):
                    info = {}
            value = info
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, str):
                found.append(value.encode("utf-8"))
        if not found:
            return None
        return found[int(torch.randint(len(found), ()))]

    def image(self, data: bytes, counts: Counter) -> Image.Image:
        return decode_image(data, self.max_pixels, counts)

    def __call__(self, sample: dict, counts: Counter) -> tuple:
        ext = image_member(sample)
        caption = self.caption(sample)
        image = self.image(sample[ext], counts)
        if self.view_transform is None:
            return self.transform(image), caption
        views = torch.stack([self.view_transform(image), self.view_transform(image)])
        return self.transform(image), caption, views


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
    """Training batches ``{"image": [B,3,H,W], "text": [B,L] (rendered: [B,3,H,W]), "caption": list,
    "_state": dict}``.

    ``_state`` (removed by the DataModule before the batch reaches the model) says which
    worker made the batch, its position after it, and the samples it read, skipped and
    converted while making it.

    Args:
        shards: local or remote shard urls.
        decode: per-sample decoder (see SampleDecoder).
        tokenizer: list[str] -> LongTensor [B, L], or a text renderer (CLIPPO,
            vlp.data.render.TextRenderer): list[str] -> images [B, 3, H, W], drawn here in the
            worker.
        batch_size: samples per batch.
        batches_per_worker: epoch length of each worker.
        shuffle_buffer: sample shuffle buffer size.
        resampled: draw shards with replacement (infinite stream) instead of splitting them.
        seed: the run's data seed.

    Set before each ``iter()`` (by the DataModule): ``epoch``; ``resume`` = ``{worker:
    {"raw", "batches"}}`` of this rank for a resumed epoch; ``rotate`` = the worker whose
    batch comes next; ``salt`` = a fresh-position salt for resumed resampled streams.
    """

    def __init__(self, shards: list[str], decode: SampleDecoder, tokenizer: Callable, batch_size: int,
                 batches_per_worker: int, shuffle_buffer: int = 1000, resampled: bool = False, seed: int = 0):
        self.shards = shards
        self.decode = decode
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.batches_per_worker = batches_per_worker
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.seed = seed
        self.epoch = 0
        self.resume: dict[int, dict] = {}
        self.rotate = 0
        self.salt = 0
        self.length: int | None = None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown")
        return self.length

    def _worker(self) -> tuple[int, int, int, int]:
        rank, world = worker_info()[:2]
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info else (0, 1)
        return rank, world, (physical + self.rotate) % workers, workers

    def _shard_passes(self, rng: random.Random, rank: int, world: int, worker: int,
                      workers: int) -> Iterator[list[str]]:
        if self.resampled:
            while True:
                yield [rng.choice(self.shards) for _ in range(max(1, len(self.shards)))]
        mine = self.shards[rank * workers + worker :: world * workers]
        while True:
            yield rng.sample(mine, len(mine))

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = self._worker()
        rng = random.Random(stable_seed(self.seed, self.epoch, rank, worker, self.salt))
        start = self.resume.get(worker, {"raw": 0, "batches": 0})
        skip, made = start["raw"], start["batches"]
        if made >= self.batches_per_worker:
            return
        raw = 0
        aug = None
        items: list = []
        counts: Counter = Counter()
        bad_shards: list[str] = []

        def read(urls: list[str]) -> Iterator[dict]:
            for url in urls:
                try:
                    yield from tar_samples(url)
                except ShardError as e:  # skip the rest of that shard and go on
                    counts["unreadable_shard"] += 1
                    bad_shards.append(str(e)[:300])

        for urls in self._shard_passes(rng, rank, world, worker, workers):
            good_in_pass = 0
            samples = read(urls)
            if self.shuffle_buffer > 1:
                # the buffer is flushed at the end of each pass: a pass is a permutation
                samples = buffer_shuffle(samples, self.shuffle_buffer, rng)
            for sample in samples:
                raw += 1
                if raw <= skip:  # resuming: read past what the run already consumed
                    good_in_pass += 1
                    continue
                if aug is None:  # the n-th batch's augmentation depends only on n
                    aug = torch.Generator().manual_seed(
                        stable_seed(self.seed, self.epoch, rank, worker, self.salt, made)).get_state()
                counts["seen"] += 1
                # the transforms draw from torch's global RNG: give them the stream's own state and
                # leave the process's (the model's, when num_workers is 0) untouched
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(aug)
                    try:
                        items.append(self.decode(sample, counts))
                        good_in_pass += 1
                    except BadSample as bad:
                        counts[bad.reason] += 1
                    aug = torch.get_rng_state()
                if len(items) < self.batch_size:
                    continue
                made += 1
                yield self._batch(items, {"epoch": self.epoch, "rank": rank, "worker": worker, "raw": raw,
                                          "batches": made, "counts": dict(counts), "bad_shards": bad_shards})
                items, counts, bad_shards, aug = [], Counter(), [], None
                if made >= self.batches_per_worker:
                    return
            if good_in_pass == 0:
                raise VLPError(
                    f"data worker {worker} of rank {rank} read a whole pass over its shards without one usable "
                    f"sample; skipped: {dict(counts)}; unreadable shards: {bad_shards[:3]}"
                )

    def _batch(self, items: list, state: dict) -> dict:
        images, captions, *views = zip(*items)
        batch = {"image": torch.stack(images), "text": self.tokenizer(list(captions)), "caption": list(captions),
                 "_state": state}
        if views:  # [B, 2, 3, H, W]: the two SimCLR views of every image (batch dimension first)
            batch["views"] = torch.stack(views[0])
        return batch

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
converted and counted; an unreadable shard is skipped, counted and named. Samples that
``data.filters`` reject are skipped and counted too (``filter_<reason>``).

Hold-out (``holdout``, vlp.data.holdout): samples whose key the hold-out selects are skipped
before decoding and counted ``heldout`` (not as bad, not as ``seen``); they still count as raw
samples read, so a resume skips them like any other and the position stays exact.

Exclusions (``exclusions``, vlp.data.exclusions, ``data.exclude_keys``): samples whose (shard,
key) the list names (e.g. near-duplicates of eval images found by `vlp overlap`) are skipped the
same way, before decoding, counted ``excluded``; the position stays exact likewise.

Several sources (``mix``, vlp.data.sources): a worker reads its part of every source and draws
each next sample's source from a seeded RNG; the position is still the raw samples read, so a
resume replays those draws without decoding and continues the uninterrupted stream.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import Counter
from collections.abc import Iterator

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from vlp.data.decode import BadSample, image_member
from vlp.data.exclusions import Exclusions
from vlp.data.fields import SampleContext, collate, decode_sample
from vlp.data.filters import SampleFilters
from vlp.data.holdout import Holdout
from vlp.data.sources import MixPart
from vlp.data.tar_reader import ShardError, tar_samples
from vlp.errors import VLPError

SKIP_REASONS = ("no_image", "corrupt_image", "too_many_pixels", "missing_caption", "empty_caption",
                "caption_not_utf8", "missing_field")


def worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers) of the calling process."""
    return wds.utils.pytorch_worker_info()


def stable_seed(*parts) -> int:
    """A seed from ``parts`` that is the same in every process (unlike ``hash``)."""
    return random.Random("-".join(map(str, parts))).getrandbits(63)


class SampleDecoder:
    """Raw webdataset sample -> ``{field name: value}`` through the declared field parts
    (vlp.data.fields); bad samples raise ``BadSample``.

    Handling (``counts`` receives the converted ones):
        - no image member (when a field reads the image), an image PIL cannot decode (corrupt or
          truncated): skipped;
        - an image over ``max_pixels`` (decompression bomb), judged from its header before
          decoding: skipped;
        - no caption, an empty or blank caption, a caption that is not UTF-8: skipped (the
          Caption field; vlp.data.fields);
        - RGBA / LA / palette-with-transparency images: composited on white (the colour the
          emoji data are drawn on), counted ``alpha_on_white``; CMYK, palette, grey and other
          modes: converted to RGB, counted ``mode_to_rgb``;
        - with ``filters`` (vlp.data.filters.SampleFilters): samples they reject are skipped and
          counted ``filter_<reason>`` (the caption rules by the caption field, the json rules
          after the fields that read no image, the size rules from the image's header).

    Every draw (caption choice, templates, augmentation) comes from torch's RNG, which the stream
    seeds per batch: reproducible, and the same after a resume. The json is parsed only for a
    sample whose fields or filters need it.
    """

    def __init__(self, fields: dict, max_pixels: int = 89_478_485, filters: SampleFilters | None = None):
        self.fields = dict(fields)
        self.max_pixels = max_pixels
        self.filters = filters
        self._needs_image = any(f.reads_image for f in self.fields.values())

    def __call__(self, sample: dict, counts: Counter) -> dict:
        if self._needs_image:
            image_member(sample)  # no image: skipped before anything is drawn for the sample
        ctx = SampleContext(sample, counts, self.max_pixels, filters=self.filters)

        def json_rules() -> None:
            if self.filters is not None and not self.filters.check_json(sample) and self.filters.sized:
                ctx.check_size = self.filters.check_size  # judged from the image header instead

        return decode_sample(self.fields, ctx, json_rules)


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
    """Training batches: the entries of the decoder's fields (vlp.data.fields; by default
    ``{"image": [B,3,H,W], "text": [B,L] (rendered: [B,3,H,W]), "caption": list}``) and
    ``"_state": dict``. The text input (tokenizer or text renderer) runs here, in the worker.

    ``_state`` (removed by the DataModule before the batch reaches the model) says which
    worker made the batch, its position after it, and the samples it read, skipped and
    converted while making it (with ``mix``: also ``source_<name>``, the samples read from each
    source).

    Args:
        shards: local or remote shard urls.
        decode: per-sample decoder (see SampleDecoder): its fields decode and collate.
        batch_size: samples per batch.
        batches_per_worker: epoch length of each worker.
        shuffle_buffer: sample shuffle buffer size.
        resampled: draw shards with replacement (infinite stream) instead of splitting them.
        seed: the run's data seed.
        mix: several sources (vlp.data.sources.MixPart: name, shards, share) instead of
            ``shards``: a worker reads its part of each (shuffled passes, as for one source,
            from its own RNG) and draws every next sample's source with probability ``share``
            from another RNG, all seeded from ``(seed, epoch, rank, worker)``. The position
            stays the raw samples read: a resume replays the draws without decoding.
        holdout: samples whose key it holds out (vlp.data.holdout.Holdout) are skipped before
            decoding and counted ``heldout``: they are the validation set.
        exclusions: samples it lists (vlp.data.exclusions.Exclusions, by shard and key) are
            skipped before decoding and counted ``excluded``.

    Set before each ``iter()`` (by the DataModule): ``epoch``; ``resume`` = ``{worker:
    {"raw", "batches"}}`` of this rank for a resumed epoch; ``rotate`` = the worker whose
    batch comes next; ``salt`` = a fresh-position salt for resumed resampled streams.
    """

    def __init__(self, shards: list[str], decode: SampleDecoder, batch_size: int,
                 batches_per_worker: int, shuffle_buffer: int = 1000, resampled: bool = False, seed: int = 0,
                 mix: list[MixPart] | None = None, holdout: Holdout | None = None,
                 exclusions: Exclusions | None = None):
        self.shards = shards
        self.holdout = holdout
        self.exclusions = exclusions if exclusions else None  # an empty list excludes nothing
        self.decode = decode
        self.batch_size = batch_size
        self.batches_per_worker = batches_per_worker
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.seed = seed
        self.mix = list(mix) if mix and len(mix) > 1 else None
        if mix and len(mix) == 1:  # one source is the plain stream
            self.shards = list(mix[0].shards)
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

    def _shard_passes(self, shards: list[str], rng: random.Random, rank: int, world: int, worker: int,
                      workers: int) -> Iterator[list[str]]:
        if self.resampled:
            while True:
                yield [rng.choice(shards) for _ in range(max(1, len(shards)))]
        mine = shards[rank * workers + worker :: world * workers]
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
        usable = [0] * (len(self.mix) if self.mix else 1)  # per source: samples used (or skipped on resume)

        def read(urls: list[str]) -> Iterator[dict]:
            for url in urls:
                try:
                    yield from tar_samples(url)
                except ShardError as e:  # skip the rest of that shard and go on
                    counts["unreadable_shard"] += 1
                    bad_shards.append(str(e)[:300])

        def passes(index: int, shards: list[str], rng: random.Random) -> Iterator[dict]:
            """One source's raw samples, pass after pass over this worker's shards."""
            for urls in self._shard_passes(shards, rng, rank, world, worker, workers):
                before = usable[index]
                samples = read(urls)
                if self.shuffle_buffer > 1:
                    # the buffer is flushed at the end of each pass: a pass is a permutation
                    samples = buffer_shuffle(samples, self.shuffle_buffer, rng)
                yield from samples
                if usable[index] == before:
                    source = f" of source {self.mix[index].name}" if self.mix else ""
                    raise VLPError(
                        f"data worker {worker} of rank {rank} read a whole pass over its shards{source} without "
                        f"one usable sample; skipped: {dict(counts)}; unreadable shards: {bad_shards[:3]}"
                    )

        if self.mix is None:
            samples, names = passes(0, self.shards, rng), None
        else:
            names = [f"source_{part.name}" for part in self.mix]
            samples = _mixed([passes(i, part.shards, random.Random(
                                  stable_seed(self.seed, self.epoch, rank, worker, self.salt, "source", i)))
                              for i, part in enumerate(self.mix)],
                             [part.share for part in self.mix], rng)
        for sample in samples:
            raw += 1
            source = sample["__source__"] if names else 0
            if raw <= skip:  # resuming: read past what the run already consumed
                usable[source] += 1
                continue
            if self.holdout is not None and self.holdout.held_out(sample["__key__"]):
                counts["heldout"] += 1  # the validation set's: never trained on, never decoded
                continue
            if self.exclusions is not None and self.exclusions.excluded(sample["__url__"], sample["__key__"]):
                counts["excluded"] += 1  # listed (e.g. a near-duplicate of an eval image): never decoded
                continue
            if aug is None:  # the n-th batch's augmentation depends only on n
                aug = torch.Generator().manual_seed(
                    stable_seed(self.seed, self.epoch, rank, worker, self.salt, made)).get_state()
            counts["seen"] += 1
            if names:
                counts[names[source]] += 1
            # the transforms draw from torch's global RNG: give them the stream's own state and
            # leave the process's (the model's, when num_workers is 0) untouched
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(aug)
                try:
                    items.append(self.decode(sample, counts))
                    usable[source] += 1
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

    def _batch(self, items: list, state: dict) -> dict:
        return {**collate(self.decode.fields, items), "_state": state}


def _mixed(sources: list[Iterator[dict]], shares: list[float], rng: random.Random) -> Iterator[dict]:
    """Samples drawn from ``sources`` (endless iterators) with probabilities ``shares``; each
    sample is tagged with its source's index (``__source__``)."""
    bounds = list(itertools.accumulate(shares))
    last = len(sources) - 1
    while True:
        index = min(bisect.bisect_right(bounds, rng.random() * bounds[-1]), last)
        sample = next(sources[index])
        sample["__source__"] = index
        yield sample

"""An eval set read in equal shares: every rank gets the same number of batches.

Sample ``i`` of the set (shards in order, samples in shard order) is item ``i // world``
of rank ``i % world``. Every rank gets ``ceil(N / world)`` items: a rank one item short
takes the set's last sample once more, marked with index -1, which the gather drops. So
every rank runs the same number of forward passes, as sharded parameters need (each
forward gathers them). Within a rank, batch ``j`` is made by data worker ``j % workers``
(the DataLoader's round robin hands them out in order).

Every reader walks all samples (reading but not decoding those of others): it learns
``N`` when the set ends, in time to pad its last batch.

With a ``holdout`` (vlp.data.holdout.Holdout) the set is the held-out samples of the shards
only: exactly those the training stream with that ``data.holdout`` skips. The others are
passed over before numbering, by every reader alike, so the equal shares above hold for the
held-out set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vlp.data.decode import BadSample
from vlp.data.fields import Caption, FieldEnv, Image, Label, SampleContext, decode_sample
from vlp.data.holdout import Holdout
from vlp.data.tar_reader import ShardError, tar_samples
from vlp.data.transforms import image_transform
from vlp.errors import VLPError

PAD = -1  # the index (and text owner) of a padding row


@dataclass
class EvalData:
    """What evaluation needs from the data side: how texts become the text input (the
    tokenizer's ids ``[B, L]``, or with a ``renderer`` (CLIPPO) images ``[B, 3, H, W]``) and
    the eval image size."""

    tokenizer: Callable[[list[str]], torch.Tensor] | None
    image_size: int
    num_workers: int = 0
    renderer: Callable[[list[str]], torch.Tensor] | None = None

    def transform(self):
        return image_transform(self.image_size, False)

    def texts(self, texts: list[str]) -> torch.Tensor:
        """The text input of ``module.embed("text", ...)`` for ``texts``: rendered when the run renders
        text, else tokenised."""
        encode = self.renderer or self.tokenizer
        if encode is None:
            raise VLPError("eval data has neither a tokenizer nor a text renderer")
        return encode(texts)


@dataclass
class ValidationSet:
    """A run's validation set (VLPDataModule.validation_set): ``shards``, read whole, or with a
    ``holdout`` only their held-out samples; ``captions``: the training caption field(s);
    ``templates``: the training caption templates (None: none)."""

    shards: list[str]
    holdout: Holdout | None
    captions: list[str]
    templates: list[str] | None = None


def set_samples(shards: list[str], holdout: Holdout | None = None) -> Iterator[dict]:
    """Every sample of an eval set in set order (shards in order, samples in shard order),
    through the checked tar reader (a broken eval shard is an error naming it); with a
    ``holdout``, only the samples it holds out."""
    for url in shards:
        try:
            for sample in tar_samples(url):
                if holdout is None or holdout.held_out(sample["__key__"]):
                    yield sample
        except ShardError as e:
            raise VLPError(f"eval shard unreadable: {e}") from None


def sample_fields(shards: list[str], parts: dict, holdout: Holdout | None = None) -> Iterator[tuple[dict, dict]]:
    """``(sample, {name: value})`` of every sample of an eval set in set order, through field
    parts that read no image (vlp.data.fields: ``Label``, ``Caption(all=True)``): labels and
    references read as training reads them, without decoding images."""
    env = FieldEnv(0, train=False)
    bound = {name: part.bound(name, env) for name, part in parts.items()}
    for sample in set_samples(shards, holdout):
        yield sample, decode_sample(bound, SampleContext(sample))


def share_size(num_samples: int, world: int) -> int:
    """Items of every rank: ``ceil(num_samples / world)``."""
    return -(-num_samples // world)


class EvalStream(IterableDataset):
    """Batches ``{"index", "image", "text", "text_owner", "label"}`` of this rank's share.

    ``index [b]`` is each row's sample number (-1: padding); ``text`` holds the text input
    (``tokenizer``: a tokenizer's ids, or a text renderer's images) of every
    caption of the batch's samples (a field whose value is a list gives several captions),
    ``text_owner`` the sample number of each (-1: padding). With ``captions``, a batch always
    has at least one text (an empty one owned by -1 if its samples have none), so that every
    rank encodes texts for every batch. With ``holdout``, the set is the held-out samples only.
    """

    def __init__(self, shards: list[str], transform: Callable, tokenizer: Callable, batch_size: int,
                 captions: list[str] = (), label_field: str | None = None, rank: int = 0, world: int = 1,
                 holdout: Holdout | None = None):
        if batch_size < 1:
            raise VLPError(f"eval batch size must be >= 1, got {batch_size}")
        self.shards = shards
        self.batch_size = batch_size
        self.captions = list(captions)
        self.rank, self.world = rank, world
        self.holdout = holdout
        # the field parts of training (vlp.data.fields), set up for evaluation: the image through
        # ``transform``, every caption of the caption fields, the label as it is
        env = FieldEnv(0, train=False, text_input=tokenizer, eval_transform=transform)
        self.fields = {"image": Image().bound("image", env)}
        if self.captions:
            self.fields["text"] = Caption(keys=self.captions, all=True).bound("text", env)
        if label_field:
            self.fields["label"] = Label(label_field).bound("label", env)
        self.tokenizer = tokenizer

    def _decode(self, index: int, sample: dict) -> tuple:
        try:  # transparency on white, as in training
            values = decode_sample(self.fields, SampleContext(sample))
        except BadSample as bad:  # eval must see the whole set
            raise VLPError(f"eval sample {sample.get('__key__')} in {sample.get('__url__')}: {bad.reason}") from None
        return index, values["image"], values.get("text", []), values.get("label")

    def _batch(self, items: list) -> dict:
        index, images, texts, labels = zip(*items)
        flat = [t for ts in texts for t in ts]
        owner = [i for i, ts in zip(index, texts) for _ in ts]
        if self.captions and not flat:
            flat, owner = [""], [PAD]
        return {
            "index": torch.tensor(index), "image": torch.stack(images),
            "text": self.tokenizer(flat) if flat else torch.zeros(0, 0, dtype=torch.long),
            "text_owner": torch.tensor(owner, dtype=torch.long), "label": list(labels),
        }

    def _samples(self) -> Iterator[dict]:
        return set_samples(self.shards, self.holdout)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        size = self.batch_size

        def mine(item: int) -> bool:  # this rank's item number -> made by this worker?
            return (item // size) % workers == worker

        items, num_samples, last = [], 0, None
        for index, sample in enumerate(self._samples()):
            num_samples, last = index + 1, sample
            item = index // self.world
            if index % self.world != self.rank or not mine(item):
                continue
            items.append(self._decode(index, sample))
            if (item + 1) % size == 0:
                yield self._batch(items)
                items = []
        share = share_size(num_samples, self.world)
        real = share_size(num_samples - self.rank, self.world) if num_samples > self.rank else 0
        if real < share and mine(share - 1):  # one short: the set's last sample again
            items.append((PAD, *self._decode(PAD, last)[1:]))
        if items:
            yield self._batch(items)

"""Embeddings of an eval set, sharded across ranks and data workers, then gathered.

Every reader walks the shards in order and numbers the samples; reader ``r`` of ``R``
(``R`` = ranks x workers) decodes and embeds only the samples with ``index % R == r``.
After the gather the samples are put back in shard order, so the embeddings (and every
metric computed from them) are those of one process reading everything.
"""

from __future__ import annotations

import io
import json
from contextlib import nullcontext
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlp.data.shards import expand_shards
from vlp.data.stream import IMAGE_EXTS, to_rgb
from vlp.data.tar_reader import ShardError, tar_samples
from vlp.data.transforms import image_transform
from vlp.errors import VLPError


@dataclass
class EvalData:
    """What evaluation needs from the data side: the tokenizer and the eval image size."""

    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    num_workers: int = 0

    def transform(self):
        return image_transform(self.image_size, False)


def field_value(sample: dict, info: dict | None, field: str):
    """``txt`` (or any other member extension) = that file's text; otherwise a dotted path
    into the sample's json (``labels.de``, ``category``, ``tags``)."""
    if field in sample and field != "json":
        return sample[field].decode("utf-8")
    if info is None:
        raise VLPError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no '{field}' "
                       "member and no json to look it up in")
    value = info
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise VLPError(f"sample {sample.get('__key__')} in {sample.get('__url__')}: "
                           f"field '{field}' not found")
        value = value[part]
    return value


class EvalStream(IterableDataset):
    """Batches ``{"index", "image", "text", "text_owner", "label"}`` of this reader's samples.

    ``text`` holds the tokens of every caption of the batch's samples (a field whose value is
    a list gives several captions), ``text_owner`` the sample index of each caption.
    """

    def __init__(self, shards: list[str], transform: Callable, tokenizer: Callable, batch_size: int,
                 captions: list[str] = (), label_field: str | None = None, rank: int = 0, world: int = 1):
        self.shards = shards
        self.transform = transform
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.captions = list(captions)
        self.label_field = label_field
        self.rank, self.world = rank, world

    def _decode(self, index: int, sample: dict) -> tuple:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise VLPError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image")
        with Image.open(io.BytesIO(sample[ext])) as im:
            image = self.transform(to_rgb(im))  # transparency on white, as in training
        info = json.loads(sample["json"]) if "json" in sample else None
        texts = []
        for f in self.captions:
            value = field_value(sample, info, f)
            texts += [value] if isinstance(value, str) else [str(v) for v in value]
        label = field_value(sample, info, self.label_field) if self.label_field else None
        return index, image, texts, label

    def _batch(self, items: list) -> dict:
        index, images, texts, labels = zip(*items)
        flat = [t for ts in texts for t in ts]
        owner = [i for i, ts in zip(index, texts) for _ in ts]
        return {
            "index": torch.tensor(index), "image": torch.stack(images),
            "text": self.tokenizer(flat) if flat else torch.zeros(0, 0, dtype=torch.long),
            "text_owner": torch.tensor(owner, dtype=torch.long), "label": list(labels),
        }

    def _samples(self) -> Iterator[dict]:
        """Every sample of every shard, in order, through the training stream's checked tar
        reader: a broken eval shard is an error naming it (eval must see the whole set)."""
        for url in self.shards:
            try:
                yield from tar_samples(url)
            except ShardError as e:
                raise VLPError(f"eval shard unreadable: {e}") from None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader, readers = self.rank * workers + worker, self.world * workers
        items = []
        for index, sample in enumerate(self._samples()):
            if index % readers != reader:
                continue
            items.append(self._decode(index, sample))
            if len(items) == self.batch_size:
                yield self._batch(items)
                items = []
        if items:
            yield self._batch(items)


@dataclass
class Features:
    """Embeddings of one eval set in shard order."""

    image: torch.Tensor  # [N, E]
    text: torch.Tensor  # [M, E]
    text_owner: torch.Tensor  # [M] sample index of each text
    labels: list  # [N]

    def __len__(self) -> int:
        return self.image.shape[0]


def gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def extract_features(module, shards: str | list[str], data: EvalData, captions: list[str] = (),
                     label_field: str | None = None, batch_size: int = 256, rank: int = 0, world: int = 1,
                     autocast: Callable | None = None) -> Features:
    """Embed ``shards`` with ``module.encode_image`` / ``encode_text``. With ``world > 1`` every
    rank must call this; each embeds its share and all receive the whole set."""
    urls = expand_shards(shards) if isinstance(shards, str) else shards
    stream = EvalStream(urls, data.transform(), data.tokenizer, batch_size, captions, label_field, rank, world)
    loader = DataLoader(stream, batch_size=None, num_workers=data.num_workers)
    device = module.device
    index, images, texts, owners, labels = [], [], [], [], []
    for batch in loader:
        with autocast() if autocast else nullcontext():
            images.append(module.encode_image(batch["image"].to(device)).float().cpu())
            if len(batch["text_owner"]):
                texts.append(module.encode_text(batch["text"].to(device)).float().cpu())
        index.append(batch["index"])
        owners.append(batch["text_owner"])
        labels += batch["label"]
    dim = images[0].shape[1] if images else 0
    local = {
        "index": torch.cat(index) if index else torch.zeros(0, dtype=torch.long),
        "image": torch.cat(images) if images else torch.zeros(0, dim),
        "text": torch.cat(texts) if texts else torch.zeros(0, dim),
        "owner": torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long),
        "labels": labels,
    }
    parts = gather_objects(local, world)
    all_index = torch.cat([p["index"] for p in parts])
    if len(all_index) == 0:
        raise VLPError(f"eval shards {shards} hold no samples")
    dim = max(p["image"].shape[1] for p in parts)
    order = all_index.argsort()
    image = torch.cat([p["image"] for p in parts if len(p["index"])])[order]
    all_labels = [x for p in parts for x in p["labels"]]
    labels = [all_labels[i] for i in order.tolist()]
    # texts: stable sort by owning sample; an owner's texts come from one reader, in field order
    owner = torch.cat([p["owner"] for p in parts])
    text = torch.cat([p["text"] for p in parts if len(p["text"])]) if len(owner) else torch.zeros(0, dim)
    if len(owner):
        text_order = owner.argsort(stable=True)
        text, owner = text[text_order], owner[text_order]
    return Features(image=image, text=text, text_owner=owner, labels=labels)

"""Embeddings of an eval set: each rank embeds its equal share (vlp.data.eval_set), then all
gather, drop the padding rows and put the samples back in shard order, so the embeddings
(and every metric computed from them) are those of one process reading everything."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from vlp.data.eval_set import PAD, EvalData, EvalStream
from vlp.data.holdout import Holdout
from vlp.data.shards import expand_shards
from vlp.distributed import gather_objects
from vlp.errors import VLPError


@dataclass
class Features:
    """Embeddings of one eval set in shard order."""

    image: torch.Tensor  # [N, E]
    text: torch.Tensor  # [M, E]
    text_owner: torch.Tensor  # [M] sample index of each text
    labels: list  # [N]

    def __len__(self) -> int:
        return self.image.shape[0]


@torch.no_grad()
def extract_features(module, shards: str | list[str], data: EvalData, captions: list[str] = (),
                     label_field: str | None = None, batch_size: int = 256, rank: int = 0, world: int = 1,
                     autocast: Callable | None = None, holdout: Holdout | None = None,
                     embeddings: tuple[str, str] = ("image", "text")) -> Features:
    """Embed ``shards`` with ``module.embed(embeddings[0], images)`` (and ``embeddings[1]`` on the
    texts when ``captions`` are given); with a ``holdout``, only their held-out samples (a validation set). With ``world > 1`` every rank must call this; every rank runs the same number of
    forward passes, embeds its share and receives the whole set."""
    urls = expand_shards(shards) if isinstance(shards, str) else shards
    stream = EvalStream(urls, data.transform(), data.texts, batch_size, captions, label_field, rank, world,
                        holdout=holdout)
    loader = DataLoader(stream, batch_size=None, num_workers=data.num_workers)
    device = module.device
    index, images, texts, owners, labels = [], [], [], [], []
    for batch in loader:
        with autocast() if autocast else nullcontext():
            images.append(module.embed(embeddings[0], batch["image"].to(device)).float().cpu())
            if captions:  # decided by the task, not the batch: every rank encodes every batch's texts
                texts.append(module.embed(embeddings[1], batch["text"].to(device)).float().cpu())
        index.append(batch["index"])
        owners.append(batch["text_owner"])
        labels += batch["label"]
    local = {
        "index": torch.cat(index) if index else torch.zeros(0, dtype=torch.long),
        "image": torch.cat(images) if images else None,
        "text": torch.cat(texts) if texts else None,
        "owner": torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long),
        "labels": labels,
    }
    parts = [p for p in gather_objects(local) if p["image"] is not None]
    if not parts:
        raise VLPError(f"eval shards {shards} hold no samples" + (" held out by data.holdout" if holdout else ""))
    all_index = torch.cat([p["index"] for p in parts])
    real = (all_index != PAD).nonzero().flatten()
    order = real[all_index[real].argsort()]
    image = torch.cat([p["image"] for p in parts])[order]
    all_labels = [x for p in parts for x in p["labels"]]
    labels = [all_labels[i] for i in order.tolist()]
    if not captions:
        return Features(image=image, text=torch.zeros(0, image.shape[1]),
                        text_owner=torch.zeros(0, dtype=torch.long), labels=labels)
    # texts: stable sort by owning sample; an owner's texts come from one batch, in field order
    owner = torch.cat([p["owner"] for p in parts])
    real = (owner != PAD).nonzero().flatten()
    text_order = real[owner[real].argsort(stable=True)]
    text = torch.cat([p["text"] for p in parts])[text_order]
    return Features(image=image, text=text, text_owner=owner[text_order], labels=labels)

"""The webdataset LightningDataModule: img2dataset-style shards -> batches."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch.utils.data import DataLoader

from vlp.data.shards import count_samples, expand_shards
from vlp.data.stream import SampleDecoder, ShardStream
from vlp.data.tokenizer import HFTokenizer, TextTokenizer
from vlp.data.transforms import image_transform
from vlp.errors import VLPError
from vlp.eval.features import EvalData


class VLPDataModule(LightningDataModule):
    """Image-text pairs from webdataset shards (``KEY.jpg|png|webp`` + ``KEY.txt`` + ``KEY.json``).

    Args:
        train_shards: shard spec: path, brace or glob pattern, ``a::b``, or
            ``builtin:emoji/google/train-*.tar`` for the data shipped with vlp.
        batch_size: samples per batch per device.
        num_workers: DataLoader workers; each reads its own shards.
        image_size: side of the square training crop.
        crop_scale: area range of the random resized crop.
        tokenizer: None = the built-in BPE; or a TextTokenizer / HFTokenizer.
        context_length: tokens per caption for the built-in tokenizer.
        shuffle_buffer: samples in the shuffle buffer of each worker.
        resampled: draw shards with replacement (infinite stream); an epoch is then
            ``train_num_samples`` samples.
        train_num_samples: samples per epoch; None = counted from the shards
            (img2dataset ``*_stats.json``, else the tar index).
        caption_key: the sample field holding the caption.
    """

    def __init__(
        self,
        train_shards: str = "builtin:emoji/google/train-*.tar",
        batch_size: int = 64,
        num_workers: int = 2,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        tokenizer: TextTokenizer | HFTokenizer | None = None,
        context_length: int = 32,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        train_num_samples: int | None = None,
        caption_key: str = "txt",
    ):
        super().__init__()
        # saved in checkpoints (as the recipe's values under the CLI) so that `vlp eval`
        # rebuilds the tokenizer and eval image size of the run
        built_by_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if built_by_cli else ["tokenizer"])
        if batch_size < 1:
            raise VLPError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise VLPError(f"data.num_workers must be >= 0, got {num_workers}")
        self.shards = expand_shards(train_shards)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.crop_scale = tuple(crop_scale)
        self.tokenizer = tokenizer or TextTokenizer(context_length=context_length)
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.train_num_samples = train_num_samples
        self.caption_key = caption_key

    def _epoch_samples(self) -> int:
        """Samples per epoch; the shard index is read once, not at every train_dataloader call."""
        if self.train_num_samples is None:
            self.train_num_samples = sum(count_samples(s) for s in self.shards)
        return self.train_num_samples

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def train_dataloader(self) -> DataLoader:
        world = self._world_size()
        workers = max(1, self.num_workers)
        if not self.resampled and len(self.shards) < world * workers:
            raise VLPError(
                f"{len(self.shards)} shards cannot feed {world} ranks x {workers} workers: "
                "lower data.num_workers, write more shards, or set data.resampled true"
            )
        total = self._epoch_samples()
        per_worker = total // (world * workers * self.batch_size)
        if per_worker < 1:
            raise VLPError(
                f"{total} samples make no full batch of {self.batch_size} on each of "
                f"{world} ranks x {workers} workers: lower data.batch_size or data.num_workers"
            )
        stream = ShardStream(
            self.shards,
            SampleDecoder(image_transform(self.image_size, True, self.crop_scale), self.caption_key),
            self.tokenizer, self.batch_size, train=True, batches_per_worker=per_worker,
            shuffle_buffer=self.shuffle_buffer, resampled=self.resampled,
        )
        stream.length = per_worker * workers
        return self._loader(stream)

    def eval_data(self, num_workers: int | None = None) -> EvalData:
        """The tokenizer and eval image size for ``vlp.eval`` (see vlp.eval.features)."""
        return EvalData(self.tokenizer, self.image_size, self.num_workers if num_workers is None else num_workers)

    def _loader(self, stream: ShardStream, workers: int | None = None) -> DataLoader:
        workers = self.num_workers if workers is None else workers
        return DataLoader(
            stream, batch_size=None, num_workers=workers,
            persistent_workers=False, pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers else None,
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # Captions and metadata stay on the host; tensors move.
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

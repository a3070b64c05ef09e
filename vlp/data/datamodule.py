"""The webdataset LightningDataModule: img2dataset-style shards -> batches."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader

from vlp.data.clip_tokenizer import ClipTokenizer
from vlp.data.decode import CONVERT_REASONS
from vlp.data.eval_set import EvalData, ValidationSet
from vlp.data.exclusions import Exclusions
from vlp.data.fields import Caption, Field, FieldEnv, Image
from vlp.data.filters import SampleFilters
from vlp.data.holdout import Holdout
from vlp.data.render import TextRenderer
from vlp.data.shards import count_samples, expand_shards
from vlp.data.sources import epoch_samples, mix_parts, resolve_sources
from vlp.data.stream import SKIP_REASONS, SampleDecoder, ShardStream
from vlp.data.tokenizer import HFTokenizer, TextTokenizer
from vlp.data.transforms import randaugment_transform
from vlp.errors import VLPError


WORKER_SIGTERM_GRACE_S = 10.0


def ignore_stop_signals(worker_id: int = 0) -> None:
    """How DataLoader workers take the signals a terminal or SLURM sends to the whole process
    group, so that the main process can finish its step, save and stop
    (vlp.callbacks.StepCheckpoint): Ctrl-C (SIGINT) is ignored; SIGTERM ends the worker
    ``WORKER_SIGTERM_GRACE_S`` seconds later, with status 0. The grace lets the main process
    fetch the batch it may be waiting for (a worker gone at once would make torch raise "worker
    exited unexpectedly" in the middle of that fetch); ending at all matters because
    multiprocessing terminates and joins daemonic workers at exit (a worker ignoring SIGTERM
    would hang that exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_after_grace)


def _exit_after_grace(signum, frame) -> None:
    import threading

    timer = threading.Timer(WORKER_SIGTERM_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


class ResumableLoader(DataLoader):
    """The training DataLoader: positions its stream before each ``iter()`` and saves and
    restores that position through Lightning's stateful-loader interface."""

    def __init__(self, owner: VLPDataModule, stream: ShardStream, num_workers: int):
        super().__init__(stream, batch_size=None, num_workers=num_workers, persistent_workers=False,
                         pin_memory=torch.cuda.is_available(), prefetch_factor=4 if num_workers else None,
                         generator=torch.Generator(),  # its base seed must not consume the global RNG
                         worker_init_fn=ignore_stop_signals)
        self.owner = owner

    def __iter__(self):
        self.owner._before_iter(self.dataset)
        return super().__iter__()

    def state_dict(self) -> dict:
        return self.owner.loader_state()

    def load_state_dict(self, state: dict) -> None:
        self.owner.load_loader_state(state)


class VLPDataModule(LightningDataModule):
    """Image-text pairs from webdataset shards (``KEY.jpg|png|webp`` + ``KEY.txt`` + ``KEY.json``).

    Args:
        train_shards: shard spec: path, brace or glob pattern, ``a::b``, or
            ``builtin:emoji/google/train-*.tar`` for the data shipped with vlp; or a list of
            sources to mix, ``[{shards: SPEC, weight: 0.7}, {shards: SPEC, weight: 0.3}]``
            (vlp.data.sources.ShardSource: also ``repeat``, ``samples``, ``name``): each sample
            is drawn from a source in proportion to the weights (without weights: to size x
            repeat); an epoch is ``sum(size x repeat)`` samples (see vlp.data.sources).
        batch_size: samples per batch per device.
        num_workers: DataLoader workers; each reads its own shards (lowered, with a warning,
            to the shards each rank gets).
        image_size: side of the square training crop.
        crop_scale: area range of the random resized crop.
        tokenizer: None = the built-in BPE; or a TextTokenizer / HFTokenizer / ClipTokenizer (OpenAI CLIP's BPE).
        context_length: tokens per caption for the built-in tokenizer.
        shuffle_buffer: samples in the shuffle buffer of each worker.
        resampled: draw shards with replacement (infinite stream); an epoch is then
            ``train_num_samples`` samples.
        train_num_samples: samples per epoch; None = counted from the shards
            (img2dataset ``*_stats.json``, else the tar index; with sources, sum(size x repeat)).
        caption_key: the sample field holding the caption: a member (``txt``), else a json path
            (``labels.de``); a json list of strings (``tags``) gives one, drawn per sample.
        seed: data seed (shard order, shuffle, augmentation); None = the run's
            ``seed_everything`` seed.
        max_bad_fraction: stop with an error once more than this share of the samples
            read is bad (checked from 100 samples on).
        max_image_pixels: images with more pixels are skipped as decompression bombs
            (judged from the header, before decoding).
        randaugment: timm RandAugment string for training images (AugReg), e.g.
            ``rand-m10-n2``; None = none.
        fields: the batch fields besides (or instead of) the two every run has, ``image``
            (vlp.data.fields.Image) and ``text`` (vlp.data.fields.Caption of ``caption_key`` /
            ``caption_keys`` / ``caption_templates``, its strings also as ``caption``): a mapping
            of names to field parts (vlp.data.fields: ``Views``, ``Caption``, ``Label``, ``Tags``,
            ``Boxes``, or a part of your own), ``null`` to drop one of the two (a recipe without
            captions). The training stream and the eval streams decode and collate through them.
        text_renderer: render the captions as images (CLIPPO, vlp.data.render.TextRenderer):
            ``batch["text"]`` is then ``[B, 3, H, W]``, drawn in the data workers (each caches
            the captions it drew), and no tokenizer is built (``tokenizer`` must be unset).
        caption_keys: draw each sample's caption from one of these fields, uniformly (instead
            of ``caption_key``): members (``txt``) or json paths (``labels.de``); e.g. the nine
            CLDR labels of the built-in emoji data, one language per sample (multilingual CLIPPO).
            A json list of strings among them gives one of its strings.
        caption_templates: templates with ``{}`` (``["a {} emoji", "an emoji of {}"]``); one is
            drawn per sample in the workers and ``{}`` replaced by its caption.
        filters: metadata filters applied while reading (vlp.data.filters.SampleFilters:
            ``{min_side: 32, max_aspect: 3.0, min_caption_chars: 2, require: [is_safe]}``);
            filtered samples are counted by reason (``data/filtered_*``).
        holdout: a deterministic hold-out of the training shards as the validation set
            (vlp.data.holdout): ``{fraction: 0.05, seed: 0}`` or just ``0.05``. The samples
            whose key hashes below the fraction are skipped before decoding (counted
            ``data/heldout``, not as bad) and are what the ``EvalTasks`` callback's validation
            tasks read. It changes the training stream (a run with a hold-out is not
            sample-identical to one without) and, when the epoch is counted from the shards,
            shrinks it to ``round(size x (1 - fraction))`` samples, so ``epoch_batches()`` and
            the LR schedule built from it follow; an explicit ``train_num_samples`` stays as given.
        val_shards: an explicit validation set instead (a shard spec); the training stream is
            then unchanged.
        exclude_keys: an exclusion file (vlp.data.exclusions; `vlp overlap --write-exclusions`
            writes one): lines ``KEY<TAB>SHARD`` (that shard's sample only; keys need not be
            unique across shards) or ``KEY`` (in every shard). Listed samples are skipped before
            decoding and counted ``data/excluded`` (not as bad); the resume stays exact. An epoch
            counted from the shards shrinks by the ``KEY<TAB>SHARD`` entries of training shards
            (key-only entries are not counted); a file none of whose entries names a training
            shard is an error (written for other data, or the data moved).

    Bad samples are skipped and counted by reason, odd image modes converted and counted
    (see vlp.data.stream.SampleDecoder); the counts (and, with sources, the samples read from
    each, ``data/source_NAME``) are logged as ``data/*`` metrics and summed up at the end of
    `vlp fit`; an unreadable shard is skipped, counted and named on
    stderr. The stream resumes exactly from a checkpoint (``--ckpt_path``): the loader's
    state holds every worker's position.
    """

    def __init__(
        self,
        # a list's items are checked by vlp.data.sources (one clear line naming the source), not
        # typed as ShardSource: jsonargparse would report only "Expected a str" for any mistake
        train_shards: str | list[str | dict] = "builtin:emoji/google/train-*.tar",
        batch_size: int = 64,
        num_workers: int = 2,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        tokenizer: TextTokenizer | HFTokenizer | ClipTokenizer | None = None,
        context_length: int = 32,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        train_num_samples: int | None = None,
        caption_key: str = "txt",
        seed: int | None = None,
        max_bad_fraction: float = 0.05,
        max_image_pixels: int = 89_478_485,
        randaugment: str | None = None,
        fields: dict[str, Field | None] | None = None,
        text_renderer: TextRenderer | None = None,
        caption_keys: list[str] | None = None,
        caption_templates: list[str] | None = None,
        filters: dict | None = None,  # SampleFilters' fields, checked there (unknown rules named)
        holdout: float | dict | None = None,  # {fraction, seed}, checked by vlp.data.holdout
        val_shards: str | None = None,
        exclude_keys: str | None = None,
    ):
        super().__init__()
        # plain values only: the run's data config (the tokenizer's class_path / init_args
        # included) reaches checkpoints through `vlp fit` (vlp.checkpointing.SCHEMA)
        self.save_hyperparameters(ignore=["tokenizer", "text_renderer", "fields"])
        if batch_size < 1:
            raise VLPError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise VLPError(f"data.num_workers must be >= 0, got {num_workers}")
        if not 0 <= max_bad_fraction <= 1:
            raise VLPError(f"data.max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.sources = resolve_sources(train_shards)  # None: one plain shard spec
        self.shards = expand_shards(train_shards) if self.sources is None else \
            [s for source in self.sources for s in source.shards]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.crop_scale = tuple(crop_scale)
        if text_renderer is not None and tokenizer is not None:
            raise VLPError("data.text_renderer draws the captions as images: leave data.tokenizer unset")
        self.text_renderer = text_renderer
        # rendered text needs no tokenizer (and the built-in one is not loaded)
        self.tokenizer = None if text_renderer is not None else tokenizer or TextTokenizer(context_length=context_length)
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.train_num_samples = train_num_samples
        self.caption_key = caption_key
        if caption_keys is not None and not caption_keys:
            raise VLPError("data.caption_keys is empty: give the fields to draw captions from, or leave it unset")
        self.caption_keys = list(caption_keys) if caption_keys else None
        if caption_templates is not None:
            bad = [t for t in caption_templates if not isinstance(t, str) or "{}" not in t]
            if not caption_templates or bad:
                raise VLPError(f"data.caption_templates: give templates with '{{}}' for the caption, got "
                               f"{bad or caption_templates!r}")
        self.caption_templates = list(caption_templates) if caption_templates else None
        # the recipe's fields first, then the two defaults it did not replace: fields decode in this
        # order (those reading no image first), so SLIP's views draw their crops before the image's
        defaults = {"image": Image(), "text": Caption(caption_key, self.caption_keys, self.caption_templates,
                                                      raw="caption")}
        declared = {**(fields or {}), **{k: v for k, v in defaults.items() if k not in (fields or {})}}
        self.fields: dict[str, Field] = {name: part for name, part in declared.items() if part is not None}
        if not self.fields:
            raise VLPError("data.fields leaves no field: a batch needs at least one")
        self.filters = SampleFilters.of(filters)
        self.holdout = Holdout.of(holdout)
        if self.holdout is not None and val_shards is not None:
            raise VLPError("give data.holdout or data.val_shards as the validation set, not both")
        try:
            self.val_shards = expand_shards(val_shards) if val_shards is not None else None
        except VLPError as e:
            raise VLPError(f"data.val_shards: {e}") from None
        self.exclusions = Exclusions.load(exclude_keys) if exclude_keys is not None else None
        if self.exclusions is not None:
            self.exclusions.check_against(self.shards)
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.max_image_pixels = max_image_pixels
        self.randaugment = randaugment
        if randaugment:
            randaugment_transform(randaugment)  # a malformed string fails here, before training
        self.stats: Counter = Counter()  # this rank's samples read / skipped / converted, whole run
        self._next_epoch = 0
        self._epoch = 0
        self._positions: dict[int, dict] = {}  # worker -> {"raw", "batches"} in the current epoch
        # the position and counts before the newest batch, and the optimiser step it feeds: a
        # checkpoint written before that step completes (after an error) reports these
        self._before_batch: tuple[int, dict, Counter] | None = None
        self._resume: dict | None = None
        self._workers = 1
        self._warned_shards: set[str] = set()
        self._warned_workers = False
        self._mix_parts = None

    def _epoch_samples(self) -> int:
        """Samples per epoch; the shard index is read once, not at every train_dataloader call."""
        if self.train_num_samples is None:
            total = sum(count_samples(s) for s in self.shards) if self.sources is None else epoch_samples(self.sources)
            if self.exclusions is not None:  # the listed samples are not trained on
                total -= self.exclusions.count_in(self.shards) if self.sources is None else \
                    sum(round(self.exclusions.count_in(s.shards) * s.repeat) for s in self.sources)
                total = max(total, 0)
            # the held-out samples are not trained on: the epoch is the rest (in expectation)
            self.train_num_samples = total if self.holdout is None else round(total * (1 - self.holdout.fraction))
        return self.train_num_samples

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _shard_sets(self) -> list[tuple[str, list[str]]]:
        """(what to call it in a message, shards) of each source; a worker reads whole shards of each."""
        if self.sources is None:
            return [("", self.shards)]
        return [(f"source {s.name}: ", s.shards) for s in self.sources]

    def _loader_workers(self, world: int) -> int:
        """``num_workers``, lowered (with a warning) to the shards each rank gets (of the source with
        the fewest): a worker reads whole shards. 0 stays 0 (the main process reads); a resampled
        stream needs no split."""
        where, shards = min(self._shard_sets(), key=lambda item: len(item[1]))
        per_rank = len(shards) // world
        if self.resampled or self.num_workers <= max(1, per_rank):
            return self.num_workers
        if not self._warned_workers:
            self._warned_workers = True
            rank_zero_warn(f"data.num_workers {self.num_workers} lowered to {per_rank}: {where}{len(shards)} shards "
                           f"give each of {world} ranks {per_rank} and a worker reads whole shards (write more "
                           "shards to use more workers)")
        return per_rank

    def train_dataloader(self) -> DataLoader:
        world = self._world_size()
        for where, shards in self._shard_sets():
            if not self.resampled and len(shards) < world:
                raise VLPError(f"{where}{len(shards)} shards cannot feed {world} ranks: write at least one shard per "
                               "rank, or set data.resampled true")
        num_workers = self._loader_workers(world)
        workers = max(1, num_workers)  # the stream's parts; recorded in the loader state
        total = self._epoch_samples()
        per_worker = total // (world * workers * self.batch_size)
        if per_worker < 1:
            raise VLPError(
                f"{total} samples make no full batch of {self.batch_size} on each of "
                f"{world} ranks x {workers} workers: lower data.batch_size or data.num_workers"
            )
        if self.seed is None:
            env = os.environ.get("PL_GLOBAL_SEED")
            self.seed = int(env) if env is not None else int.from_bytes(os.urandom(4), "little")
        decode = SampleDecoder(self.train_fields(), self.max_image_pixels, filters=self.filters)
        stream = ShardStream(self.shards, decode, self.batch_size, batches_per_worker=per_worker,
                             shuffle_buffer=self.shuffle_buffer, resampled=self.resampled, seed=self.seed,
                             mix=self._mix(), holdout=self.holdout, exclusions=self.exclusions)
        stream.length = per_worker * workers
        self._workers = workers
        return ResumableLoader(self, stream, num_workers=num_workers)

    def _mix(self):
        """The sources with their shares for the stream (None: one plain shard spec)."""
        if self.sources is None:
            return None
        if self._mix_parts is None:
            self._mix_parts = mix_parts(self.sources)
        return self._mix_parts

    def mix_signature(self) -> list | None:
        """What a resumed run must share with the saved one for its mixed stream to continue:
        each source's name, shard count and share (None for one plain shard spec)."""
        mix = self._mix()
        return None if mix is None else [[p.name, len(p.shards), round(p.share, 12)] for p in mix]

    def validation_set(self) -> ValidationSet | None:
        """The validation set: the held-out samples of the training shards (``data.holdout``),
        or ``data.val_shards``; None without either. ``captions`` are the training caption
        field(s), for validation retrieval, ``templates`` the caption templates."""
        if self.holdout is None and self.val_shards is None:
            return None
        if self.val_shards is not None:
            shards = list(self.val_shards)
        else:  # every source's shards once, in order
            shards = list(dict.fromkeys(self.shards))
        text = self.fields.get("text")
        captions = (text.fields or [text.key]) if isinstance(text, Caption) else []
        return ValidationSet(shards, self.holdout, list(captions), text.templates if isinstance(text, Caption) else None)

    def epoch_batches(self) -> int:
        """Batches per rank in one epoch (the schedule's epoch length), without iterating."""
        return len(self.train_dataloader())

    def train_fields(self) -> dict[str, Field]:
        """The declared fields set up for training (augmenting images; the text input)."""
        env = FieldEnv(self.image_size, True, self.crop_scale, self.randaugment, self.text_input)
        return {name: part.bound(name, env) for name, part in self.fields.items()}

    def example_batch(self) -> dict:
        """One sample in a training batch's shapes (a blank image, a tokenised or rendered
        caption, ...: each field's example), e.g. for counting the model's FLOPs."""
        batch: dict = {}
        for part in self.train_fields().values():
            batch.update(part.example())
        return batch

    def batch_fields(self) -> frozenset[str]:
        """The entries of a training batch (what the objectives read is checked against them)."""
        return frozenset(e for part in self.train_fields().values() for e in part.entries())

    @property
    def text_input(self):
        """Captions -> ``batch["text"]``: the text renderer when there is one, else the tokenizer."""
        return self.text_renderer if self.text_renderer is not None else self.tokenizer

    def eval_data(self, num_workers: int | None = None) -> EvalData:
        """The tokenizer (or text renderer) and eval image size for ``vlp.eval`` (see
        vlp.data.eval_set)."""
        return EvalData(self.tokenizer, self.image_size, self.num_workers if num_workers is None else num_workers,
                        renderer=self.text_renderer)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # Captions and metadata stay on the host; tensors move (at any depth: the model summary's
        # example input is a batch inside a tuple).
        return apply_to_collection(batch, torch.Tensor, lambda t: t.to(device, non_blocking=True))

    # ---- stream position: set before every iter(), reported by every batch, saved in checkpoints

    def _before_iter(self, stream: ShardStream) -> None:
        stream.resume, stream.rotate, stream.salt, stream.seed = {}, 0, 0, self.seed
        epoch = self._next_epoch
        resume, self._resume = self._resume, None
        done = 0
        if resume is not None:
            epoch = resume["epoch"]
            done = sum(p["batches"] for p in resume["positions"].values())
            if done >= stream.batches_per_worker * self._workers:
                epoch, resume = epoch + 1, None  # saved at the end of an epoch: start the next
        self._epoch, self._next_epoch = epoch, epoch + 1
        stream.epoch = epoch
        self._positions = {}
        if resume is None:
            return
        if self.resampled:
            stream.salt = 1 + resume["step"]
            rank_zero_warn(f"data.resampled: the stream resumes at a fresh position seeded from (seed, epoch "
                           f"{epoch}, step {resume['step']}), not where the interrupted run stood")
            return
        self._positions = {int(w): dict(p) for w, p in resume["positions"].items()}
        stream.resume = {w: dict(p) for w, p in self._positions.items()}
        stream.rotate = done % self._workers

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        state = batch.pop("_state", None) if isinstance(batch, dict) else None
        if state is None:
            return batch
        step = self.trainer.global_step if self.trainer is not None else 0
        self._before_batch = (step, {w: dict(p) for w, p in self._positions.items()}, Counter(self.stats))
        self._positions[state["worker"]] = {"raw": state["raw"], "batches": state["batches"]}
        self.stats.update(state["counts"])
        for shard in state["bad_shards"]:
            if shard not in self._warned_shards:
                self._warned_shards.add(shard)
                print(f"vlp: skipped unreadable shard {shard}", file=sys.stderr, flush=True)
        seen, bad = self.stats["seen"], sum(self.stats[r] for r in SKIP_REASONS)
        if seen >= 100 and bad > self.max_bad_fraction * seen:
            reasons = ", ".join(f"{r} {self.stats[r]}" for r in SKIP_REASONS if self.stats[r])
            raise VLPError(f"{bad} of {seen} samples read were bad ({100 * bad / seen:.1f}% > data.max_bad_fraction "
                           f"{100 * self.max_bad_fraction:g}%): {reasons}")
        return batch

    def _filter_reasons(self) -> list[str]:
        return self.filters.reasons() if self.filters is not None else []

    def _source_keys(self) -> list[str]:
        return [f"source_{s.name}" for s in self.sources] if self.sources is not None else []

    def data_metrics(self) -> dict[str, float]:
        """This rank's counts for logging: samples read (in all and from each source), skipped (in
        all and by reason), filtered (likewise), converted."""
        out = {"data/samples_read": float(self.stats["seen"]),
               "data/skipped": float(sum(self.stats[r] for r in SKIP_REASONS))}
        if self.holdout is not None:
            out["data/heldout"] = float(self.stats["heldout"])
        if self.exclusions is not None:
            out["data/excluded"] = float(self.stats["excluded"])
        for key in (*SKIP_REASONS, *CONVERT_REASONS, "unreadable_shard"):
            if self.stats[key]:
                prefix = "converted" if key in CONVERT_REASONS else "skipped"
                out[f"data/{prefix}_{key}"] = float(self.stats[key])
        if self.filters is not None:
            reasons = self._filter_reasons()
            out["data/filtered"] = float(sum(self.stats[r] for r in reasons))
            for key in reasons:
                if self.stats[key]:
                    out[f"data/filtered_{key.removeprefix('filter_')}"] = float(self.stats[key])
        for key in self._source_keys():
            out[f"data/{key}"] = float(self.stats[key])
        return out

    def summary(self) -> str:
        """One line with the counts of all ranks (a collective under DDP: every rank calls it)."""
        filters, sources = self._filter_reasons(), self._source_keys()
        keys = ["seen", *SKIP_REASONS, *CONVERT_REASONS, "unreadable_shard", *filters, *sources, "heldout", "excluded"]
        counts = torch.tensor([float(self.stats[k]) for k in keys], dtype=torch.float64)
        if self._world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = counts.to(self.trainer.strategy.root_device)
            torch.distributed.all_reduce(counts)
        total = dict(zip(keys, counts.long().tolist()))
        skipped = {k: total[k] for k in SKIP_REASONS if total[k]}
        converted = {k: total[k] for k in CONVERT_REASONS if total[k]}
        parts = [f"{total['seen']} samples read", f"skipped {sum(skipped.values())}"
                 + (f" ({', '.join(f'{k} {v}' for k, v in skipped.items())})" if skipped else "")]
        if self.filters is not None:
            filtered = {k.removeprefix("filter_"): total[k] for k in filters if total[k]}
            parts.append(f"filtered {sum(filtered.values())}"
                         + (f" ({', '.join(f'{k} {v}' for k, v in filtered.items())})" if filtered else ""))
        if converted:
            parts.append("converted " + ", ".join(f"{k} {v}" for k, v in converted.items()))
        if sources:
            parts.append("from sources " + ", ".join(f"{k.removeprefix('source_')} {total[k]}" for k in sources))
        if self.holdout is not None:
            parts.append(f"held out {total['heldout']} (validation)")
        if self.exclusions is not None:
            parts.append(f"excluded {total['excluded']} (data.exclude_keys)")
        if total["unreadable_shard"]:
            parts.append(f"unreadable shards {total['unreadable_shard']} (named above)")
        return "; ".join(parts)

    def loader_state(self) -> dict:
        """The stream position of every rank (a collective under DDP: every rank calls it)."""
        trainer = self.trainer
        positions, stats = self._positions, self.stats
        if self._before_batch is not None and trainer is not None and trainer.global_step == self._before_batch[0]:
            _, positions, stats = self._before_batch  # the newest batch's step did not complete
        mine = {"positions": {w: dict(p) for w, p in positions.items()}, "stats": dict(stats)}
        world = self._world_size()
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list = [None] * world
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        return {"seed": self.seed, "epoch": self._epoch, "step": trainer.global_step if trainer else 0,
                "world": world, "workers": self._workers, "batch_size": self.batch_size,
                "mix": self.mix_signature(), "holdout": self._holdout_spec(),
                "exclusions": self._exclusions_spec(), "ranks": dict(enumerate(ranks))}

    def _holdout_spec(self) -> dict | None:
        return None if self.holdout is None else self.holdout.spec()

    def _exclusions_spec(self) -> dict | None:
        return None if self.exclusions is None else self.exclusions.spec()

    def load_loader_state(self, state: dict) -> None:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self._world_size()
        self.seed = state["seed"]
        mine = state["ranks"].get(rank) or {}
        self.stats = Counter(mine.get("stats", {}))
        if (state["world"], state["workers"], state["batch_size"]) != (world, self._workers, self.batch_size):
            rank_zero_warn(
                f"the data stream cannot resume exactly: the checkpoint ran {state['world']} ranks x "
                f"{state['workers']} workers x batch {state['batch_size']}, this run {world} x {self._workers} x "
                f"{self.batch_size}; continuing with the start of epoch {state['epoch'] + 1}"
            )
            self._next_epoch = state["epoch"] + 1
            return
        saved_mix = state.get("mix")  # absent from checkpoints written before sources could be mixed
        if saved_mix != self.mix_signature():
            rank_zero_warn(
                f"the data stream cannot resume exactly: the checkpoint read the sources {saved_mix or 'one spec'}, "
                f"this run {self.mix_signature() or 'one spec'} ([name, shards, share]); continuing with the start "
                f"of epoch {state['epoch'] + 1}"
            )
            self._next_epoch = state["epoch"] + 1
            return
        saved_holdout = state.get("holdout")  # absent from checkpoints written before the hold-out
        if saved_holdout != self._holdout_spec():
            rank_zero_warn(
                f"the data stream cannot resume exactly: the checkpoint held out {saved_holdout or 'nothing'}, "
                f"this run {self._holdout_spec() or 'nothing'}; continuing with the start of epoch {state['epoch'] + 1}"
            )
            self._next_epoch = state["epoch"] + 1
            return
        saved, mine_spec = state.get("exclusions"), self._exclusions_spec()  # absent from older checkpoints
        if ([saved.get(k) for k in ("entries", "digest")] if saved else None) != \
                ([mine_spec.get(k) for k in ("entries", "digest")] if mine_spec else None):
            # the raw position does not depend on what is excluded: continue there with this run's list
            rank_zero_warn(f"data.exclude_keys changed since the checkpoint ({_describe(saved)} -> "
                           f"{_describe(mine_spec)}): the stream continues at the saved position and skips what "
                           "this run's list names")
        self._resume = {"epoch": state["epoch"], "step": state["step"], "positions": mine.get("positions", {})}


def _describe(spec: dict | None) -> str:
    return "no list" if not spec else f"{spec['entries']} entries of {spec['file']}"

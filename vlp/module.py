"""VLPModule: named towers and a list of weighted objectives; the step object makes gradients."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from vlp.checkpointing import SCHEMA, upgrade_checkpoint
from vlp.distributed import gather_objects, rng_states, set_rng_states
from vlp.errors import VLPError
from vlp.objectives.base import Objective
from vlp.optim import OptimConfig, build_optimizer
from vlp.step import PlainStep, TrainStep
from vlp.strategies import replicates_parameters
from vlp.towers.output import TowerOutput


class VLPModule(LightningModule):
    """Named towers -> the outputs the objectives declare -> objectives -> weighted sum.

    Args:
        towers: the towers by name (``image``, ``text``, ...); a tower named ``t`` reads the
            batch field ``t``. Each returns a TowerOutput (vlp.towers.output).
        objectives: the losses; each declares the tower outputs it reads (``reads``, e.g.
            ``image.pooled``, ``views.features``) and is logged as ``train/<name>_loss``; the
            total ``train/loss`` is the sum of ``weight * loss``.
        optim: optimiser and schedule settings.
        share: more names for a tower: ``{views: image}`` runs the ``image`` tower on the batch
            field ``views`` (SLIP's augmented views); ``{text: image}`` makes one tower read
            both fields (CLIPPO). A shared name holds no parameters of its own.
        inputs: the batch field a name reads when it is not the name itself: ``{aux: text}``
            runs the tower ``aux`` on ``batch["text"]``; a name an objective reads as a field
            (``fields``) is mapped the same way. Every batch access goes through this map.
        step: how a batch becomes gradients (vlp.step; default PlainStep).
        heads: named modules that objectives train and inference uses (``{decoder:
            vlp.heads.CaptionDecoder}``); each sizes itself on the towers (``attach``), and an
            objective that uses one names it (``heads_used``).
        init_from: start parts from a checkpoint's weights: ``{towers.text: PATH, heads.decoder:
            PATH}`` loads each named part (a tower, a head, an objective such as
            ``objectives.0``) from the same part of any checkpoint vlp reads (a file, a sharded
            directory, an older schema; vlp.inference.part_state), strictly. A training-only
            setting: a loaded model takes its weights from its own checkpoint.

    The module runs exactly the towers and outputs that the objectives read: a name no
    objective reads is not run, and a tower runs its pooled-only pass (vlp.towers.pooled)
    when no objective reads its ``tokens``. A field with more leading dimensions than the
    tower takes (``views [B, 2, 3, H, W]`` for a tower of ``input_ndim`` 4) is flattened into
    the batch dimension and the outputs are split back (``[B, 2, ...]``).
    """

    def __init__(
        self,
        towers: dict[str, nn.Module],
        objectives: list[Objective],
        optim: OptimConfig | None = None,
        share: dict[str, str] | None = None,
        inputs: dict[str, str] | None = None,
        step: TrainStep | None = None,
        heads: dict[str, nn.Module] | None = None,
        init_from: dict[str, str] | None = None,
    ):
        super().__init__()
        # the parts are not hyperparameters: what rebuilds the model is the recipe's config, which
        # `vlp fit` gives the module (``config``) and checkpoints keep (vlp.checkpointing.SCHEMA)
        self.save_hyperparameters(ignore=["towers", "objectives", "step", "heads"])
        if not towers:
            raise VLPError("model.towers is empty: a recipe needs at least one tower")
        if not objectives:
            raise VLPError("model.objectives is empty: a recipe needs at least one objective")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise VLPError(f"objective names must differ, got {names}")
        share = dict(share or {})
        for alias, target in share.items():
            if alias in towers:
                raise VLPError(f"model.share.{alias}: {alias} is a tower of its own already")
            if target not in towers:
                raise VLPError(f"model.share.{alias}: no tower named {target} (the towers: {sorted(towers)})")
        self.towers = nn.ModuleDict(towers)
        self.share = share
        streams = {name: self.towers[share.get(name, name)] for name in [*towers, *share]}
        heads = dict(heads or {})
        for head in heads.values():  # before the objectives: a head is sized on the towers
            if callable(getattr(head, "attach", None)):
                head.attach(streams)
        for objective in objectives:
            used = getattr(objective, "heads_used", ())
            missing = [h for h in used if h not in heads]
            if missing:
                raise VLPError(f"objective {objective.name} trains the head {missing[0]!r}, which model.heads does not "
                               f"name (the heads: {sorted(heads) or 'none'})")
            objective.bind_heads({h: heads[h] for h in used})
            objective.attach(streams)
        self.objectives = nn.ModuleList(objectives)
        self.heads = nn.ModuleDict(heads)  # after the objectives: the parameters keep their order
        self.reads = read_plan(objectives, streams)
        fields = {f for o in objectives for f in o.fields}
        unknown = sorted(set(inputs or {}) - set(streams) - fields)
        if unknown:
            raise VLPError(f"model.inputs names {unknown}, which are neither towers, shared names nor fields the "
                           f"objectives read (the names: {sorted(set(streams) | fields)})")
        self.inputs = {name: (inputs or {}).get(name, name) for name in [*streams, *sorted(fields - set(streams))]}
        self.step = step or PlainStep()
        if callable(getattr(self.step, "bind", None)):
            self.step.bind(self)  # a step refuses objectives it cannot train
        self.automatic_optimization = self.step.automatic
        self._pooled_kw = {name: _takes_tokens_flag(tower) for name, tower in self.towers.items()}
        self.optim = optim or OptimConfig()
        for part, path in (init_from or {}).items():
            self._init_part(part, path)
        self.recipe: str | None = None  # set by `vlp fit --recipe`, kept in checkpoints
        # {"model": ..., "data": ...}: the run's model and data config (class_path / init_args), set
        # by `vlp fit`, kept in checkpoints; vlp.inference.load rebuilds the model from it
        self.config: dict | None = None
        self._step_rng: tuple[int, dict] | None = None  # (step, RNG states as that step began)

    @classmethod
    def inference_args(cls, init_args: dict) -> dict:
        """The weights come from the checkpoint being loaded (vlp.inference): no ``init_from``."""
        return {**init_args, "init_from": None} if "init_from" in init_args else init_args

    def _init_part(self, part: str, path: str) -> None:
        from vlp.inference import part_state

        try:
            target = self.get_submodule(part)
        except AttributeError:
            raise VLPError(f"model.init_from: the model has no part {part!r} (e.g. towers.text, heads.decoder, "
                           "objectives.0)") from None
        try:
            target.load_state_dict(part_state(path, part))
        except VLPError as e:
            raise VLPError(f"model.init_from.{part}: {e}") from None
        except RuntimeError as e:  # shapes or names that do not fit
            raise VLPError(f"model.init_from.{part}: {path} does not fit: {str(e).splitlines()[0]}") from None

    @property
    def nonfinite_skipped(self) -> int:
        """Steps skipped so far for a loss or gradients that were not finite (vlp.step)."""
        return self.step.nonfinite.skipped

    def batch_fields(self) -> set[str]:
        """The batch fields the objectives need (the towers' inputs and their own fields)."""
        return {self.inputs[name] for name in self.reads} | {self.inputs[f] for o in self.objectives for f in o.fields}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # RNG states of every rank (Lightning keeps none), so that a resumed run draws the
        # same random numbers as the uninterrupted one
        states = rng_states()
        if self._step_rng is not None and self._trainer is not None and self._step_rng[0] == self.trainer.global_step:
            states = self._step_rng[1]  # saved before this step completed (after an error): its start
        gathered = gather_objects(states)
        checkpoint["vlp"] = {"schema": SCHEMA, "recipe": self.recipe, **(self.config or {}), "rng": gathered,
                             "nonfinite_skipped": self.nonfinite_skipped}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        upgrade_checkpoint(checkpoint)
        saved = checkpoint.get("vlp") or {}
        self.recipe = saved.get("recipe", self.recipe)
        self.step.nonfinite.skipped = saved.get("nonfinite_skipped", 0)
        rng = saved.get("rng")
        if rng:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            if rank < len(rng):
                set_rng_states(rng[rank])

    def setup(self, stage: str) -> None:
        # One sample of the data's shapes: Lightning's model summary counts the FLOPs of its
        # forward (towers, eval mode) as "Total FLOPs". The summary runs that forward on rank 0
        # alone: not with sharded parameters (FSDP2, DeepSpeed), whose forward is a collective.
        example = getattr(self.trainer.datamodule, "example_batch", None)
        if self.example_input_array is None and callable(example) and replicates_parameters(self.trainer.strategy):
            fields = {self.inputs[name] for name in self.reads}
            sample = {k: v for k, v in example().items() if k in fields}
            if set(sample) == fields:
                self.example_input_array = (self.trainer.precision_plugin.convert_input(sample),)

    def run_tower(self, name: str, x: torch.Tensor, tokens: bool) -> TowerOutput:
        """The tower of ``name`` (a tower or a shared name) on ``x``."""
        tower_name = self.share.get(name, name)
        tower = self.towers[tower_name]
        lead = x.shape[: max(0, x.ndim - getattr(tower, "input_ndim", x.ndim))]
        if lead:
            x = x.flatten(0, len(lead))
        out = tower(x) if tokens or not self._pooled_kw[tower_name] else tower(x, tokens=False)
        return out.unflatten(tuple(lead) + (-1,)) if lead else out

    def embed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``[B, E]``: the pooled output of the tower of ``name`` (a tower or a shared
        name) on ``x`` (its input: images ``[B, 3, H, W]``, token ids ``[B, L]``, rendered text).
        What eval compares: a task names the two embeddings it scores (``image`` and ``text`` by
        default)."""
        if name not in self.inputs or self.share.get(name, name) not in self.towers:
            raise VLPError(f"the model has no tower or shared name {name!r} to embed with (the names: "
                           f"{sorted(n for n in self.inputs if self.share.get(n, n) in self.towers)})")
        return F.normalize(self.run_tower(name, x, False).pooled, dim=-1)

    def similarity_scale(self, a: str = "image", b: str = "text") -> float:
        """The temperature of the objective that scores ``a`` against ``b`` (``compares``) as its
        loss uses it (``scale()``); 100 (CLIP's cap) when none does. Every rank must call it: a
        sharded scale is gathered."""
        for objective in self.objectives:
            if set(getattr(objective, "compares", ())) == {a, b} and callable(getattr(objective, "scale", None)):
                scale = objective.scale().detach()
                if hasattr(scale, "full_tensor"):  # a DTensor (FSDP2)
                    scale = scale.full_tensor()
                return float(scale.float())
        return 100.0

    def forward(self, batch: dict, reads: dict[str, set[str]] | None = None) -> dict[str, TowerOutput]:
        """The outputs ``reads`` names (default: what the objectives read): ``{name: TowerOutput}``
        for every name read; ``tokens`` only where read."""
        reads = self.reads if reads is None else reads
        outputs = {}
        for name, parts in reads.items():
            field = self.inputs[name]
            if field not in batch:
                raise VLPError(f"the batch has no field {field!r}, which the objectives read (it has {sorted(batch)})")
            outputs[name] = self.run_tower(name, batch[field], tokens=bool(parts - POOLED_PARTS))
        return outputs

    def objective_loss(self, outputs: dict[str, TowerOutput], batch: dict) -> torch.Tensor:
        """The weighted sum of the objectives on ``outputs``, each logged. The objectives see the
        batch through the name -> field map (FieldView)."""
        total = 0.0
        batch_size = next(t.shape[0] for o in outputs.values() for t in (o.pooled, o.features) if t is not None)
        view = FieldView(batch, self.inputs)
        for objective in self.objectives:
            loss, metrics = objective(outputs, view)
            total = total + objective.weight * loss
            self.log(f"train/{objective.name}_loss", loss, batch_size=batch_size)
            for key, value in metrics.items():
                self.log(f"train/{objective.name}_{key}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        return self.step(self, batch, batch_idx)

    # ---- the step object's hooks (vlp.step: the non-finite guard lives there)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.step.before_optimizer_step(self)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_rng = (self.trainer.global_step, rng_states())
        self.step.nonfinite.batch_start()

    def on_train_start(self) -> None:
        self.step.nonfinite.train_start(self)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.step.nonfinite.batch_end(self)
        metrics = {"train/nonfinite_skipped": float(self.nonfinite_skipped)} if self.nonfinite_skipped else {}
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if hasattr(datamodule, "data_metrics"):
            metrics.update(datamodule.data_metrics())
        if metrics:
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def configure_model(self) -> None:
        """Where sharding hooks in: under Lightning's ModelParallelStrategy (FSDP2) the towers'
        blocks, towers and objectives are sharded over the data-parallel mesh
        (vlp.strategies.shard_fsdp2), and the heads as the objectives; other strategies wrap the module
        themselves."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_sharded", False):
            return
        from vlp.strategies import data_parallel_mesh, shard_fsdp2

        shard_fsdp2(self.towers, [*self.objectives, *self.heads.values()], data_parallel_mesh(mesh))
        self._sharded = True

    def configure_optimizers(self):
        total = schedule_steps(self.trainer)
        if not math.isfinite(total):
            raise VLPError("the schedule needs a finite length: set trainer.max_steps or trainer.max_epochs")
        strategy = self.trainer.strategy
        # ZeRO-Offload of parameters trained on GPUs: the optimiser steps on the CPU (DeepSpeed's CPU Adam)
        cpu_adam = bool(getattr(strategy, "offloads_optimizer", lambda: False)()) and strategy.root_device.type != "cpu"
        opt, sched = build_optimizer(self, self.optim, int(total), cpu_adam=cpu_adam)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


POOLED_PARTS = frozenset({"pooled", "features", "prefix_tokens"})  # what the pooled-only pass gives
PARTS = POOLED_PARTS | {"tokens", "token_mask", "grid", "kept"}


def read_plan(objectives: list[Objective], streams: dict[str, nn.Module]) -> dict[str, set[str]]:
    """``{name: {output parts}}`` that the objectives read, in the order of ``streams``, checked
    against the names and the parts (TowerOutput's fields and the tower's ``extra_parts``)."""
    plan: dict[str, set[str]] = {}
    for objective in objectives:
        for item in sorted(objective.reads):
            name, _, part = item.partition(".")
            if name not in streams:
                raise VLPError(f"objective {objective.name} reads {item}, but there is no tower or shared name "
                               f"{name!r} (the names: {sorted(streams)}; share a tower with model.share)")
            known = PARTS | getattr(streams[name], "extra_parts", frozenset())
            if part not in known:
                raise VLPError(f"objective {objective.name} reads {item}: a tower output is one of {sorted(known)}")
            plan.setdefault(name, set()).add(part)
    # the towers run in the order they are declared, the same in every process (a set's order of
    # strings is not: ranks would start different collectives, and random draws would move)
    return {name: plan[name] for name in streams if name in plan}


class MissingField(VLPError, KeyError):
    """A name whose field the batch lacks: a VLPError to the user, a KeyError to ``Mapping.get``
    and ``in``."""

    def __str__(self) -> str:
        return str(self.args[0])


class FieldView(Mapping):
    """A batch seen by names: ``view[name]`` is ``batch[inputs.get(name, name)]``, so an objective
    reads the field its name is mapped to (``model.inputs``); a missing field is a clear error."""

    def __init__(self, batch: dict, inputs: dict[str, str]):
        self.batch, self.names = batch, inputs

    def __getitem__(self, name: str):
        field = self.names.get(name, name)
        if field not in self.batch:
            via = f" (the field of the name {name!r})" if field != name else ""
            raise MissingField(f"the batch has no field {field!r}{via}; it has {sorted(self.batch)}")
        return self.batch[field]

    def __iter__(self):
        return iter(self.batch)

    def __len__(self) -> int:
        return len(self.batch)


def schedule_steps(trainer) -> float:
    """Optimiser steps of the whole run (the schedule's length): Lightning's
    ``estimated_stepping_batches``, but with the epoch length asked of the datamodule when it
    can tell (``epoch_batches()``). Lightning's own estimate builds and iterates the training
    loader before a checkpoint is restored and then never hands the loader its saved state, so
    a resumed ``max_epochs`` run read other data than the uninterrupted one."""
    datamodule = getattr(trainer, "datamodule", None)
    if trainer.max_epochs == -1 or not callable(getattr(datamodule, "epoch_batches", None)):
        return trainer.estimated_stepping_batches
    batches = datamodule.epoch_batches()
    limit = trainer.limit_train_batches
    batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * limit)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def _takes_tokens_flag(tower: nn.Module) -> bool:
    """Whether a tower's forward accepts ``tokens=False`` (vlp's towers do; a user's may not)."""
    try:
        return "tokens" in inspect.signature(tower.forward).parameters
    except (TypeError, ValueError):
        return False

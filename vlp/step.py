"""How a batch becomes gradients: the training step as an object the module calls.

``PlainStep`` is one forward and one backward over the whole batch (Lightning's automatic
optimisation). ``GradCacheStep`` (the gradient cache of BASIC) splits the batch into chunks
with ``automatic = False`` and drives the backward passes and the optimiser step itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vlp.distributed import rng_states, set_rng_states
from vlp.errors import VLPError
from vlp.strategies import engine_skipped_steps, gradients_on_parameters
from vlp.towers.output import TowerOutput

TORCH_RNG = ("torch", "cuda")  # what a chunk's forward draws from (dropout, FLIP masks, drop path)


class NonFiniteGuard:
    """The bookkeeping of non-finite steps: how many were skipped in all (``skipped``, kept in
    checkpoints) and in a row (more than ``model.optim.max_nonfinite_in_row`` stop the run).
    A step counts once however many of its checks fail. DeepSpeed skips such steps in its ZeRO
    optimiser itself: its engine's count is read after every batch (``batch_end``)."""

    def __init__(self):
        self.skipped = 0
        self.in_row = 0
        self.this_step = False
        self.engine_skipped = 0  # DeepSpeed: the engine's count of skipped steps seen so far

    def count(self, module) -> None:
        """This step was not finite: count it (once), stop after too many in a row."""
        if self.this_step:
            return
        self.this_step = True
        self.in_row += 1
        self.skipped += 1
        limit = module.optim.max_nonfinite_in_row
        if self.in_row > limit:
            step = module.trainer.global_step if module._trainer is not None else "?"
            raise VLPError(
                f"the loss or gradients were not finite for {self.in_row} steps in a row (step {step}; "
                f"model.optim.max_nonfinite_in_row is {limit}): lower model.optim.lr, raise warmup_steps, "
                "or check the data"
            )

    def train_start(self, module) -> None:
        # DeepSpeed: a resumed engine brings back the skips of the run before (counted in
        # ``skipped``, restored from vlp's state): only those from here on are new
        skipped = engine_skipped_steps(module.trainer.strategy) if module._trainer is not None else None
        self.engine_skipped = skipped or 0

    def batch_start(self) -> None:
        self.this_step = False

    def batch_end(self, module) -> None:
        """DeepSpeed: a step that its ZeRO optimiser skipped counts as non-finite (a 16-mixed
        loss scaler's skips do not, as under the other strategies); a finite step ends a row."""
        if module._trainer is not None and not scaler_skips_nonfinite(module):
            skipped = engine_skipped_steps(module.trainer.strategy)
            if skipped is not None:
                if skipped > self.engine_skipped:
                    self.count(module)
                self.engine_skipped = skipped
        if not self.this_step:
            self.in_row = 0


def scaler_skips_nonfinite(module) -> bool:
    """16-mixed precision: the gradient scaler skips non-finite steps itself."""
    return module._trainer is not None and str(module.trainer.precision).startswith("16")


def _grads_on_parameters(module) -> bool:
    return module._trainer is None or gradients_on_parameters(module.trainer.strategy)


class TrainStep:
    """Base class: ``__call__(module, batch, batch_idx)`` returns the loss for Lightning's
    backward (``automatic = True``), or None to skip the batch (no backward, no update).
    ``nonfinite`` counts the steps skipped for a loss or gradients that were not finite."""

    automatic: bool = True

    def __call__(self, module, batch: dict, batch_idx: int) -> torch.Tensor | None:
        raise NotImplementedError

    @property
    def nonfinite(self) -> NonFiniteGuard:
        # made on first use: a subclass need not call this class's __init__
        guard = self.__dict__.get("_nonfinite")
        if guard is None:
            guard = self.__dict__["_nonfinite"] = NonFiniteGuard()
        return guard

    def bind(self, module) -> None:
        """Called when the module is built: refuse what the step cannot train."""

    def before_optimizer_step(self, module) -> None:
        """Called after the backward, before the optimiser step (see PlainStep)."""


class PlainStep(TrainStep):
    """Towers -> declared outputs -> objectives -> weighted sum, one backward.

    Non-finite steps are skipped: a loss that is not finite on any rank makes every rank skip
    (the ranks agree through the strategy). In one process the step returns None, so
    Lightning runs no backward and AdamW updates nothing; under several processes (Lightning
    refuses None there) and under DeepSpeed every rank runs the backward of a loss whose
    gradients are all NaN, and the gradient check below (DeepSpeed: its own) drops the step.
    Gradients that are not finite under a finite loss are caught after the backward where the
    strategy keeps gradients on the parameters (one device, DDP, FSDP2); DeepSpeed's ZeRO
    optimiser skips steps whose gradient norm is not finite (vlp.strategies.DeepSpeedStrategy);
    16-mixed precision leaves both to its gradient scaler. More than
    ``model.optim.max_nonfinite_in_row`` in a row stop the run (NonFiniteGuard).
    """

    def __call__(self, module, batch: dict, batch_idx: int) -> torch.Tensor | None:
        loss = module.objective_loss(module(batch), batch)
        if scaler_skips_nonfinite(module):
            return loss
        finite = bool(torch.isfinite(loss.detach()))
        if module._trainer is not None:
            finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return loss
        self.nonfinite.count(module)
        if module._trainer is not None and (module.trainer.world_size > 1 or not _grads_on_parameters(module)):
            # Lightning refuses a skipped backward (None) under several processes, and DeepSpeed
            # (which owns backward and step) always: the backward runs on a loss whose
            # gradients are all NaN, and the step is dropped after it (before_optimizer_step;
            # DeepSpeed's ZeRO optimiser skips a step whose gradient norm is not finite)
            return loss * torch.nan
        return None

    def before_optimizer_step(self, module) -> None:
        if scaler_skips_nonfinite(module) or not _grads_on_parameters(module):
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:  # a skipped batch: nothing to check
            return
        ok = torch.stack(torch._foreach_norm(grads)).isfinite().all()
        finite = bool(ok)
        if module._trainer is not None:
            finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        self.nonfinite.count(module)
        for p in module.parameters():
            p.grad = None  # AdamW leaves parameters without gradients untouched


CACHEABLE_PARTS = frozenset({"pooled", "features"})


class GradCacheStep(PlainStep):
    """The gradient cache of BASIC (Pham et al. 2021; Gao et al. 2021's GradCache): a batch far
    larger than fits in memory, with the gradients of the full-batch step.

    1. Every chunk of ``chunk_size`` samples runs through the towers without a graph; the
       pooled outputs are kept (and the random state each chunk began with).
    2. The objectives run once on the whole batch's outputs, as leaves: one backward gives
       the loss parameters (logit scale, bias, SimCLR's head) their gradients and the outputs
       theirs.
    3. Every chunk runs again with a graph, its random state replayed (dropout, FLIP masks,
       drop path draw the same numbers as in 1), and back-propagates its cached gradient.

    Peak memory is one chunk's activations plus the batch's embeddings. Under DDP the
    backward passes run without DDP's reducer and the gradients are averaged once, after
    pass 3 (one all-reduce per step). Batch-norm running statistics are updated by pass 1
    only (pass 3 puts them back), once per sample. ``gradient_clip_val`` clips the
    synchronised gradients before the optimiser step; a recipe's ``trainer.gradient_clip_val``
    is handed to the step (Lightning clips only automatic steps). Non-finite losses and
    gradients are skipped as in PlainStep.

    Works for objectives that read pooled outputs (``pooled`` / ``features``: CLIP, SigLIP,
    SLIP's SimCLR term); one that reads per-token outputs (CoCa's captioning) is refused.
    Runs on one device or under DDP (not FSDP2 / DeepSpeed, which own their backward).

    Args:
        chunk_size: samples per chunk (on each rank).
        gradient_clip_val: clip the gradient norm (or value) to this; None = no clipping.
        gradient_clip_algorithm: ``norm`` or ``value``.
    """

    automatic = False

    def __init__(self, chunk_size: int = 64, gradient_clip_val: float | None = None,
                 gradient_clip_algorithm: str = "norm"):
        if chunk_size < 1:
            raise VLPError(f"GradCacheStep chunk_size must be >= 1, got {chunk_size}")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise VLPError(f"gradient_clip_algorithm must be norm or value, got {gradient_clip_algorithm!r}")
        self.chunk_size = chunk_size
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm

    def bind(self, module) -> None:
        """Refuse objectives whose outputs cannot be cached (checked when the module is built)."""
        for objective in module.objectives:
            bad = sorted(r for r in objective.reads if r.split(".", 1)[1] not in CACHEABLE_PARTS)
            if bad:
                raise VLPError(
                    f"the gradient cache (GradCacheStep) caches pooled outputs; objective {objective.name} "
                    f"({type(objective).__name__}) reads {', '.join(bad)}: outputs it does not keep (per-token or "
                    "pooler outputs); train it with the plain step (model.step: null)")

    def take_trainer_clipping(self, trainer) -> None:
        """Move ``trainer.gradient_clip_val`` to the step (Lightning refuses it for manual steps)."""
        if trainer.gradient_clip_val is None:
            return
        if self.gradient_clip_val is None:
            self.gradient_clip_val = float(trainer.gradient_clip_val)
            self.gradient_clip_algorithm = str(trainer.gradient_clip_algorithm or "norm")
        trainer.gradient_clip_val = None

    @staticmethod
    def _check_strategy(module) -> None:
        if module._trainer is None:
            return
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        strategy = module.trainer.strategy
        if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise VLPError(f"the gradient cache (GradCacheStep) runs on one device or under DDP, not "
                           f"{type(strategy).__name__}")

    def __call__(self, module, batch: dict, batch_idx: int) -> torch.Tensor | None:
        self._check_strategy(module)
        trainer = module._trainer
        opt = module.optimizers() if trainer is not None else None
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        loss = self.gradients(module, batch)
        if trainer is not None:
            opt.step()  # Lightning counts the step; a skipped one has no gradients: nothing moves
            scheduler = module.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
        return None if loss is None else loss.detach()

    def gradients(self, module, batch: dict) -> torch.Tensor | None:
        """Fill the parameters' ``.grad`` with the full-batch gradients (averaged over ranks);
        the loss, or None for a skipped (non-finite) batch with no gradients."""
        reads = module.reads
        fields = {module.inputs[name] for name in reads}
        size = {batch[f].shape[0] for f in fields}
        if len(size) != 1:
            raise VLPError(f"the towers' inputs {sorted(fields)} have different batch sizes {sorted(size)}")
        size = size.pop()
        chunks = [slice(i, min(i + self.chunk_size, size)) for i in range(0, size, self.chunk_size)]

        def part(c: slice) -> dict:
            return {k: (v[c] if k in fields else v) for k, v in batch.items()}

        # 1: the embeddings of every chunk, no graph; the random state each chunk began with
        states, cached = [], {name: {p: [] for p in parts} for name, parts in reads.items()}
        with torch.no_grad():
            for c in chunks:
                states.append(rng_states(TORCH_RNG))
                out = module(part(c))
                for name, parts in reads.items():
                    for p in parts:
                        cached[name][p].append(getattr(out[name], p))
        leaves = {name: {p: torch.cat(v).requires_grad_() for p, v in parts.items()} for name, parts in cached.items()}
        outputs = {name: TowerOutput(pooled=parts.get("pooled"), features=parts.get("features"))
                   for name, parts in leaves.items()}
        # 2: the loss on the whole batch; its gradient w.r.t. the embeddings and loss parameters
        loss = module.objective_loss(outputs, batch)
        finite = bool(torch.isfinite(loss.detach()))
        if module._trainer is not None:
            finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self.nonfinite.count(module)
            return None
        with _no_reducer(module):
            _backward(module, loss)
            # 3: each chunk again with a graph and its pass-1 random state; its cached gradient
            with _frozen_batch_norm_stats(module), torch.random.fork_rng(devices=_rng_devices(module)):
                for c, state in zip(chunks, states):
                    set_rng_states(state)
                    out = module(part(c))
                    tensors, grads = [], []
                    for name, parts in leaves.items():
                        for p, leaf in parts.items():
                            tensor = getattr(out[name], p)
                            # a tower with nothing to train (LiT, locked with its head) has
                            # outputs without a graph: nothing to back-propagate into
                            if leaf.grad is not None and tensor.requires_grad:
                                tensors.append(tensor)
                                grads.append(leaf.grad[c])
                    if tensors:
                        torch.autograd.backward(tensors, grads)
        _average_gradients(module)
        return loss

    def before_optimizer_step(self, module) -> None:
        super().before_optimizer_step(module)
        if self.gradient_clip_val is None:
            return
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return
        if self.gradient_clip_algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(params, self.gradient_clip_val)


def _rng_devices(module) -> list:
    device = getattr(module, "device", torch.device("cpu"))
    return [device] if device.type == "cuda" else []


def _backward(module, loss: torch.Tensor) -> None:
    """The loss's backward through the precision plugin (16-mixed scales it) when trained."""
    if module._trainer is not None:
        module.manual_backward(loss)
    else:
        loss.backward()


@contextmanager
def _no_reducer(module) -> Iterator[None]:
    """DDP's reducer off (its ``no_sync``): the step averages the gradients itself, once."""
    wrapper = module.trainer.strategy.model if module._trainer is not None else None
    if isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
        with wrapper.no_sync():
            yield
    else:
        yield


@contextmanager
def _frozen_batch_norm_stats(module) -> Iterator[None]:
    """Batch-norm layers normalise with their chunk's statistics (as in pass 1) but their
    running statistics are put back afterwards: each sample updates them once."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


def _average_gradients(module) -> None:
    """All-reduce (mean over ranks) every gradient in one flat buffer per dtype."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in same:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

"""Step checkpoints: every N optimiser steps, the newest K kept, plus `last.ckpt`, a final one
written before the end-of-run evaluation, and one on an interrupt (SIGINT / SIGTERM) or an error."""

from __future__ import annotations

import signal
import sys
import threading
from weakref import proxy

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StepCheckpoint(ModelCheckpoint):
    """Save every ``every_n_steps`` optimiser steps (mid-epoch too), keep the newest ``keep``,
    keep ``last.ckpt`` pointing at the newest, and save once more when training ends off the
    step grid (Lightning's ModelCheckpoint would leave the final steps unsaved). The final save
    comes before any end-of-run evaluation (`EvalTasks` asks for it), so an evaluation that
    fails or is interrupted loses no training.

    Interrupts: on SIGINT (Ctrl-C) or SIGTERM (SLURM preemption, ``kill``) during training the
    run finishes the optimiser step it is in, saves a checkpoint, skips the end-of-run
    evaluation and stops; `vlp fit` then exits with status 128 + the signal number. A second
    signal stops at once. Under several ranks the ranks agree at every step (one small
    all-reduce), so they all stop after the same step. The data workers ignore these signals
    (the main process stops them).

    Errors: when training raises (a bad-data limit, non-finite losses, out of memory, ...) in
    a one-process run, the state of the last completed step is saved before the error goes on
    (under several ranks the other ranks may be blocked in a collective, so nothing is saved).

    Sharded checkpoints (DeepSpeed, FSDP2 under ModelParallelStrategy: directories) are written
    under ``NAME.partial`` and renamed into place once every process has written its part, so
    a directory named ``*.ckpt`` is always complete (a run killed while saving leaves a
    ``*.partial`` directory, never resumed from). Under DeepSpeed SIGINT / SIGTERM save as above
    (every rank saves its shard); the save after an error is a one-process run's only, as for
    the other strategies.

    Every checkpoint written this way resumes exactly: ``vlp fit --recipe X --ckpt_path last``.
    Names are ``epoch=E-step=S.ckpt`` with E the (0-based) epoch in which step S ran. Files are
    written atomically by `vlp fit` (see vlp.checkpointing). Other ModelCheckpoint arguments
    (``dirpath``, ``filename``) pass through.
    """

    def __init__(self, every_n_steps: int = 1000, keep: int = 2, save_last: bool = True,
                 dirpath: str | None = None, filename: str | None = None, on_interrupt: bool = True,
                 on_error: bool = True):
        if every_n_steps < 1 or keep < 1:
            raise ValueError(f"StepCheckpoint needs every_n_steps >= 1 and keep >= 1, got {every_n_steps}, {keep}")
        super().__init__(dirpath=dirpath, filename=filename, monitor="step", mode="max", save_top_k=keep,
                         every_n_train_steps=every_n_steps, save_last=save_last)
        self.on_interrupt = on_interrupt
        self.on_error = on_error
        self.interrupted: str | None = None  # the signal's name once a run was stopped by one
        self._signal: int | None = None
        self._saved_handlers: dict = {}

    # ---- names: the epoch in which the step ran (after an epoch's last step Lightning has
    # already counted the next epoch, and a resumed run may count it either way)

    def _monitor_candidates(self, trainer) -> dict:
        candidates = super()._monitor_candidates(trainer)
        per_epoch = trainer.num_training_batches
        step = trainer.global_step
        if isinstance(per_epoch, int) and per_epoch > 0 and step > 0:
            steps_per_epoch = -(-per_epoch // trainer.accumulate_grad_batches)
            candidates["epoch"] = torch.tensor((step - 1) // steps_per_epoch)
        return candidates

    def _save_now(self, trainer) -> None:
        """Save the current step (top-k and last), unless it is saved already."""
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """ModelCheckpoint's save; a sharded checkpoint (a directory) goes to ``NAME.partial``
        first and is renamed into place by rank 0 once every rank has written its part."""
        from vlp.checkpointing import remove_path, replace_path, saves_directories

        if not saves_directories(trainer.strategy) or "://" in str(filepath):
            return super()._save_checkpoint(trainer, filepath)
        strategy = trainer.strategy
        partial = f"{filepath}.partial"
        if trainer.is_global_zero:
            remove_path(partial)  # a leftover of a save that was killed
        strategy.barrier("vlp_checkpoint_start")
        trainer.save_checkpoint(partial, self.save_weights_only)
        strategy.barrier("vlp_checkpoint_written")
        if trainer.is_global_zero:
            replace_path(partial, filepath)
        strategy.barrier("vlp_checkpoint_renamed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def save_final(self, trainer) -> None:
        """The end-of-run checkpoint (called by end-of-run evaluations before they start)."""
        self._save_now(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_now(trainer)
        self._restore_handlers()
        super().on_train_end(trainer, pl_module)

    # ---- interrupts

    def on_train_start(self, trainer, pl_module) -> None:
        self.interrupted, self._signal = None, None
        if self.on_interrupt and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._saved_handlers[signum] = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # the second one: stop at once
            self._restore_handlers()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            sys.exit(128 + signum)
        self._signal = signum
        print(f"\nvlp: {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def _restore_handlers(self) -> None:
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)
        self._saved_handlers = {}

    def _stop_requested(self, trainer) -> int:
        """The signal any rank received (0 if none), agreed by every rank."""
        flag = torch.tensor([self._signal or 0], device=trainer.strategy.root_device)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.on_interrupt or self.interrupted:
            return
        signum = self._stop_requested(trainer)
        if signum:
            self._save_now(trainer)
            self.interrupted = signal.Signals(signum).name
            trainer.should_stop = True

    # ---- errors

    _after_error = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._after_error:
            _as_if_saved_at_step_end(checkpoint, trainer.global_step, trainer.num_training_batches)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()
        if not self.on_error or trainer.world_size > 1 or not trainer.training or trainer.global_step == 0:
            return
        batches = trainer.fit_loop.epoch_loop.batch_progress.current
        if batches.processed == 0 or trainer.accumulate_grad_batches != 1:
            return  # no step of this epoch completed (or one is half accumulated): no exact state to save
        self._after_error = True
        try:
            self._save_now(trainer)  # the module and the datamodule report the last completed step
        except Exception as e:  # noqa: BLE001 - the original error matters more
            print(f"vlp: could not save a checkpoint after the error: {e}", file=sys.stderr)
            return
        finally:
            self._after_error = False
        if trainer.is_global_zero and self.last_model_path:
            print(f"vlp: training stopped by an error; saved step {trainer.global_step} to {self.last_model_path}",
                  file=sys.stderr, flush=True)


def _as_if_saved_at_step_end(checkpoint: dict, step: int, epoch_batches: float) -> None:
    """Loop counters of a checkpoint saved after an error (mid-step, or between steps) rewritten
    to the form they have in a checkpoint saved at the end of the last completed step (in
    ``on_train_batch_end``, before Lightning counts that batch completed), the form Lightning's
    restart expects: it then continues with the next batch, as after any step checkpoint."""
    loop = checkpoint["loops"]["fit_loop"]
    batches = loop["epoch_loop.batch_progress"]
    for part in ("current", "total"):
        done = batches[part]["processed"]
        batches[part].update(ready=done, started=done, processed=done, completed=done - 1)
    batches["is_last_batch"] = batches["current"]["processed"] >= epoch_batches
    loop["epoch_loop.state_dict"]["_batches_that_stepped"] = step - 1
    optim = loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    for part in ("current", "total"):
        optim["step"][part]["ready"] = optim["step"][part]["completed"]
        optim["zero_grad"][part].update(ready=optim["step"][part]["completed"],
                                        started=optim["step"][part]["completed"],
                                        completed=optim["step"][part]["completed"])


def interrupted_by(trainer) -> str | None:
    """The signal name if a StepCheckpoint of ``trainer`` stopped the run on a signal."""
    return next((cb.interrupted for cb in trainer.callbacks if getattr(cb, "interrupted", None)), None)

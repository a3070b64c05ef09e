"""Run evaluation tasks during and at the end of `vlp fit`, log and print their metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from vlp.callbacks.checkpoint import interrupted_by
from vlp.errors import VLPError
from vlp.eval.tasks import load_task, task_summary
from vlp.eval.validation import validation_tasks


class EvalTasks(Callback):
    """Evaluate built-in or YAML-defined tasks (see vlp.eval.tasks; `vlp eval --list`).

    Args:
        tasks: task names (``emoji_google_test_retrieval``) or task YAML paths.
        every_n_steps: also evaluate every N optimiser steps (None = only at the end).
        periodic_tasks: the test tasks of those periodic evaluations, e.g. a cheap subset for a
            learning curve; None = ``tasks`` when the data has no validation set, else none
            (periodic evaluations then run the validation tasks only).
        val_tasks: tasks on the run's validation set (``data.holdout`` or ``data.val_shards``;
            vlp.eval.validation): ``retrieval`` (the training caption field), ``zeroshot:FIELD``,
            or a task name / YAML whose shards are replaced by the validation set. None =
            ``retrieval`` (+ ``zeroshot:category`` when the samples' json has a category) if the
            data has a validation set, else none; ``[]`` = none.
        at_end: evaluate when training ends, print a summary and write
            ``eval.json`` into the log directory.
        batch_size: eval batch size per rank.
        num_workers: data workers per rank for eval (None = the DataModule's).

    On several ranks every rank embeds an equal share of each eval set (the same number of
    forward passes on every rank, so sharded parameters work) and the embeddings are
    gathered, so the metrics equal those of one process. They are logged (from rank 0) as
    ``eval/<task>/<metric>``, with ``eval/train_seconds``: wall-clock seconds of training since
    this launch's training started, not counting this callback's own evaluations (the x axis of
    an accuracy-against-time curve). Every evaluation is also kept in ``history`` (step,
    train_seconds, metrics per task), which ``eval.json`` holds.

    Validation tasks run at every evaluation (periodic and final), are logged as
    ``val/<task>/<metric>`` (and put in ``trainer.callback_metrics``, for early stopping or a
    monitored checkpoint) and kept apart from the test tasks: ``val_results`` in ``eval.json``,
    ``val_metrics`` in each ``history`` entry.
    """

    def __init__(self, tasks: list[str], every_n_steps: int | None = None, at_end: bool = True,
                 batch_size: int = 256, num_workers: int | None = None, periodic_tasks: list[str] | None = None,
                 val_tasks: list[str] | None = None):
        self.tasks = [load_task(t) for t in tasks]
        self._periodic_default = periodic_tasks is None
        self.periodic_tasks = self.tasks if periodic_tasks is None else [load_task(t) for t in periodic_tasks]
        self.val_specs = None if val_tasks is None else list(val_tasks)
        self.val_tasks: list = []  # built from the data in setup
        self.val_results: list[dict] = []
        self.every_n_steps = every_n_steps
        self.at_end = at_end
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.results: list[dict] = []
        self.history: list[dict] = []
        self._last_step = -1
        self._train_start: float | None = None
        self._eval_seconds = 0.0
        self._last_results: dict[str, dict] = {}
        self._last_val: dict[str, dict] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        val = datamodule.validation_set() if callable(getattr(datamodule, "validation_set", None)) else None
        if val is None:
            if self.val_specs:
                raise VLPError("EvalTasks.val_tasks need a validation set: set data.holdout (a hold-out of the "
                               "training shards) or data.val_shards")
            return
        self.val_tasks = validation_tasks(self.val_specs, val)
        if self._periodic_default and self.val_tasks:
            self.periodic_tasks = []  # tuning looks at validation numbers only

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_start = time.perf_counter()
        self._eval_seconds = 0.0

    def _run(self, trainer: Trainer, module: LightningModule, tasks: list,
             val_tasks: list = ()) -> tuple[list[dict], list[dict]]:
        """Run the test ``tasks`` and the ``val_tasks``; log, keep in ``history``; return both results."""
        start = time.perf_counter()
        train_seconds = start - (self._train_start or start) - self._eval_seconds
        data = trainer.datamodule.eval_data(self.num_workers)

        def run(todo: list) -> list[dict]:
            return [task.run(module, data, trainer.global_rank, trainer.world_size, batch_size=self.batch_size,
                             autocast=trainer.precision_plugin.forward_context) for task in todo]

        val, results = run(val_tasks), run(tasks)
        entry = self.history[-1] if self.history else None
        if entry is None or entry["step"] != trainer.global_step:  # else: the end, right after a periodic eval
            entry = {"step": trainer.global_step, "train_seconds": train_seconds, "metrics": {}}
            if self.val_tasks:
                entry["val_metrics"] = {}
            self.history.append(entry)
        entry["metrics"].update({r["task"]: r["metrics"] for r in results})
        if val:
            entry.setdefault("val_metrics", {}).update({r["task"]: r["metrics"] for r in val})
        self._last_results = {r["task"]: r for r in results}
        self._last_val = {r["task"]: r for r in val}
        val_metrics = {f"val/{r['task']}/{k}": v for r in val for k, v in r["metrics"].items()}
        # the same on every rank: early stopping / a monitored checkpoint can read them
        trainer.callback_metrics.update({k: torch.tensor(float(v)) for k, v in val_metrics.items()})
        if trainer.global_rank == 0:
            metrics = {f"eval/{r['task']}/{k}": v for r in results for k, v in r["metrics"].items()}
            metrics.update(val_metrics)
            metrics["eval/train_seconds"] = entry["train_seconds"]
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self._eval_seconds += time.perf_counter() - start
        return results, val

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # once per optimiser step, also under gradient accumulation
        if self.every_n_steps and step % self.every_n_steps == 0 and step > 0 and step != self._last_step:
            self._last_step = step
            if self.periodic_tasks or self.val_tasks:
                self._run(trainer, pl_module, self.periodic_tasks, self.val_tasks)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.at_end:
            return
        if interrupted_by(trainer):  # stopped by a signal: checkpoint saved, leave quickly
            return
        for cb in trainer.checkpoint_callbacks:  # the final checkpoint before an evaluation that may fail
            if callable(getattr(cb, "save_final", None)):
                cb.save_final(trainer)
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        # tasks a periodic evaluation just ran at this very step are not run again
        just = self._last_step == trainer.global_step
        done = self._last_results if just else {}
        done_val = self._last_val if just else {}
        todo = [t for t in self.tasks if t.name not in done]
        todo_val = [t for t in self.val_tasks if t.name not in done_val]
        if todo or todo_val:
            results, val = self._run(trainer, pl_module, todo, todo_val)
            done = {**done, **{r["task"]: r for r in results}}
            done_val = {**done_val, **{r["task"]: r for r in val}}
        self.results = [done[t.name] for t in self.tasks]
        self.val_results = [done_val[t.name] for t in self.val_tasks]
        if trainer.global_rank != 0:
            return
        lines = [""]
        for title, results in (("validation", self.val_results), ("evaluation", self.results)):
            if results:
                lines.append(f"{title} after step {trainer.global_step}:")
                lines += [f"  {r['task']:<40} {task_summary(r)}" for r in results]
        print("\n".join(lines), flush=True)
        if log_dir:
            out = Path(log_dir) / "eval.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            saved = {"step": trainer.global_step, "results": self.results}
            if self.val_tasks:
                saved["val_results"] = self.val_results
            out.write_text(json.dumps({**saved, "history": self.history}, indent=2))

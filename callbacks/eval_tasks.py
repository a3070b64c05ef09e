"""Run evaluation tasks during and at the end of `vlp fit`, log and print their metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from vlp.callbacks.checkpoint import interrupted_by
from vlp.eval.tasks import load_task, task_summary


class EvalTasks(Callback):
    """Evaluate built-in or YAML-defined tasks (see vlp.eval.tasks; `vlp eval --list`).

    Args:
        tasks: task names (``emoji_google_test_retrieval``) or task YAML paths.
        every_n_steps: also evaluate every N optimiser steps (None = only at the end).
        periodic_tasks: the tasks of those periodic evaluations (None = ``tasks``), e.g. a
            cheap subset for a learning curve.
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
    """

    def __init__(self, tasks: list[str], every_n_steps: int | None = None, at_end: bool = True,
                 batch_size: int = 256, num_workers: int | None = None, periodic_tasks: list[str] | None = None):
        self.tasks = [load_task(t) for t in tasks]
        self.periodic_tasks = self.tasks if periodic_tasks is None else [load_task(t) for t in periodic_tasks]
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

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_start = time.perf_counter()
        self._eval_seconds = 0.0

    def _run(self, trainer: Trainer, module: LightningModule, tasks: list) -> list[dict]:
        start = time.perf_counter()
        train_seconds = start - (self._train_start or start) - self._eval_seconds
        data = trainer.datamodule.eval_data(self.num_workers)
        results = [task.run(module, data, trainer.global_rank, trainer.world_size, batch_size=self.batch_size,
                            autocast=trainer.precision_plugin.forward_context)
                   for task in tasks]
        entry = self.history[-1] if self.history else None
        if entry is None or entry["step"] != trainer.global_step:  # else: the end, right after a periodic eval
            entry = {"step": trainer.global_step, "train_seconds": train_seconds, "metrics": {}}
            self.history.append(entry)
        entry["metrics"].update({r["task"]: r["metrics"] for r in results})
        self._last_results = {r["task"]: r for r in results}
        if trainer.global_rank == 0:
            metrics = {f"eval/{r['task']}/{k}": v for r in results for k, v in r["metrics"].items()}
            metrics["eval/train_seconds"] = entry["train_seconds"]
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self._eval_seconds += time.perf_counter() - start
        return results

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # once per optimiser step, also under gradient accumulation
        if self.every_n_steps and step % self.every_n_steps == 0 and step > 0 and step != self._last_step:
            self._last_step = step
            self._run(trainer, pl_module, self.periodic_tasks)

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
        done = self._last_results if self._last_step == trainer.global_step else {}
        todo = [t for t in self.tasks if t.name not in done]
        if todo:
            done = {**done, **{r["task"]: r for r in self._run(trainer, pl_module, todo)}}
        self.results = [done[t.name] for t in self.tasks]
        if trainer.global_rank != 0:
            return
        lines = ["", "evaluation after step %d:" % trainer.global_step]
        for r in self.results:
            lines.append(f"  {r['task']:<40} {task_summary(r)}")
        print("\n".join(lines), flush=True)
        if log_dir:
            out = Path(log_dir) / "eval.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"step": trainer.global_step, "results": self.results,
                                       "history": self.history}, indent=2))

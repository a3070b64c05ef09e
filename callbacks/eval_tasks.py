"""Run evaluation tasks during and at the end of `vlp fit`, log and print their metrics."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from vlp.eval.tasks import load_task, run_task


class EvalTasks(Callback):
    """Evaluate built-in or YAML-defined tasks (see vlp.eval.tasks).

    Args:
        tasks: task names (``emoji_google_test_retrieval``) or task YAML paths.
        every_n_steps: also evaluate every N optimiser steps (None = only at the end).
        at_end: evaluate when training ends, print a summary and write
            ``eval.json`` into the log directory.
        batch_size: eval batch size.

    Metrics are logged as ``eval/<task>/<metric>``. Runs on rank 0.
    """

    def __init__(self, tasks: list[str], every_n_steps: int | None = None, at_end: bool = True,
                 batch_size: int = 256):
        self.tasks = [load_task(t) for t in tasks]
        self.every_n_steps = every_n_steps
        self.at_end = at_end
        self.batch_size = batch_size
        self.results: list[dict] = []

    def _run(self, trainer: Trainer, module: LightningModule) -> list[dict]:
        if trainer.global_rank != 0:
            return []
        results = [run_task(module, task, trainer.datamodule, self.batch_size) for task in self.tasks]
        metrics = {f"eval/{r['task']}/{k}": v for r in results for k, v in r["metrics"].items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return results

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step > 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.at_end:
            return
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        self.results = self._run(trainer, pl_module)
        if not self.results:
            return
        lines = ["", "evaluation after step %d:" % trainer.global_step]
        for r in self.results:
            shown = "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["metrics"].items()
                              if k.endswith(("R@1", "R@5", "top1")))
            lines.append(f"  {r['task']:<34} {shown}")
        print("\n".join(lines), flush=True)
        if log_dir:
            out = Path(log_dir) / "eval.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"step": trainer.global_step, "results": self.results}, indent=2))

"""Lightning callbacks of vlp (installed as ``vlp.callbacks``)."""

from vlp.callbacks.checkpoint import StepCheckpoint
from vlp.callbacks.eval_tasks import EvalTasks

__all__ = ["EvalTasks", "StepCheckpoint"]

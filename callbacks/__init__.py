"""Lightning callbacks of vlp (installed as ``vlp.callbacks``)."""

from vlp.callbacks.checkpoint import StepCheckpoint
from vlp.callbacks.eval_tasks import EvalTasks
from vlp.callbacks.flip import UnmaskedTuning
from vlp.callbacks.progress import ProgressLog
from vlp.callbacks.throughput import ThroughputMonitor

__all__ = ["EvalTasks", "ProgressLog", "StepCheckpoint", "ThroughputMonitor", "UnmaskedTuning"]

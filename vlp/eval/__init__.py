"""Evaluation: one class per task kind, tasks as YAML data (vlp.eval.tasks), one JSON result format."""

from vlp.eval.base import EvalTask
from vlp.eval.captioning import Captioning
from vlp.eval.few_shot import FewShot
from vlp.eval.linear_probe import LinearProbe
from vlp.eval.retrieval import Retrieval
from vlp.eval.tasks import load_task
from vlp.eval.zeroshot import ZeroShotClassification

__all__ = ["Captioning", "EvalTask", "FewShot", "LinearProbe", "Retrieval", "ZeroShotClassification", "load_task"]

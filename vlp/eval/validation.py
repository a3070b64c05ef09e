"""Validation tasks: eval tasks on a run's validation set (the held-out samples of its training
shards, ``data.holdout``, or ``data.val_shards``), built from the data settings rather than from
fixed paths, so that recipes are tuned on validation numbers and test numbers are read once.

A task spec (an item of ``EvalTasks.val_tasks``) is one of:

- ``retrieval``: image-text retrieval with the training caption field(s) (``data.caption_key``,
  or every one of ``data.caption_keys``) as the captions;
- ``zeroshot:FIELD``: zero-shot classification on a label field (a member or json path, e.g.
  ``zeroshot:category``), classes = the sorted labels found in the validation set, prompts =
  ``data.caption_templates`` when set, else ``imagenet7``;
- a task name or YAML path (vlp.eval.tasks.load_task): that task with its shards replaced by
  the validation set's.

Without specs (``val_tasks`` unset): ``retrieval``, and ``zeroshot:category`` when the first
validation sample's json has a ``category`` field.
"""

from __future__ import annotations


from vlp.data.eval_set import ValidationSet, set_samples
from vlp.data.fields import SampleContext
from vlp.errors import VLPError
from vlp.eval.base import EvalTask
from vlp.eval.retrieval import Retrieval
from vlp.eval.tasks import load_task
from vlp.eval.zeroshot import ZeroShotClassification


def first_sample(val: ValidationSet) -> dict:
    """The validation set's first sample (an error if it holds none)."""
    sample = next(iter(set_samples(val.shards, val.holdout)), None)
    if sample is None:
        what = f"data.holdout {val.holdout.spec()} selects no sample of" if val.holdout else "no sample in"
        raise VLPError(f"the validation set is empty: {what} {len(val.shards)} shard(s) ({val.shards[0]} ...)")
    return sample


def _has_field(sample: dict, field: str) -> bool:
    return SampleContext(sample).value(field) is not None


def default_specs(val: ValidationSet) -> list[str]:
    """``retrieval``, plus ``zeroshot:category`` when the validation samples carry a category."""
    return ["retrieval"] + (["zeroshot:category"] if _has_field(first_sample(val), "category") else [])


def validation_tasks(specs: list[str] | None, val: ValidationSet) -> list[EvalTask]:
    """The tasks of ``specs`` (None: ``default_specs``) on the validation set ``val``."""
    specs = default_specs(val) if specs is None else list(specs)
    tasks: list[EvalTask] = []
    for spec in specs:
        if spec == "retrieval":
            task = Retrieval(val.shards, captions=val.captions, name="retrieval", holdout=val.holdout)
        elif spec.startswith("zeroshot:"):
            field = spec.split(":", 1)[1].strip()
            if not field:
                raise VLPError(f"validation task {spec!r}: give the label field, e.g. zeroshot:category")
            task = ZeroShotClassification(val.shards, label_field=field, templates=val.templates or "imagenet7",
                                          name=f"zeroshot_{field}", holdout=val.holdout)
        else:
            try:
                task = load_task(spec)
            except VLPError as e:
                raise VLPError(f"validation task {spec!r}: {e} (or retrieval, zeroshot:FIELD)") from None
            task.shards, task.holdout = val.shards, val.holdout
        tasks.append(task)
    names = [t.name for t in tasks]
    if len(set(names)) < len(names):
        raise VLPError(f"validation task names must differ, got {names}")
    return tasks

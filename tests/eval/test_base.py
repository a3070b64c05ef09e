"""The base of every task kind (vlp.eval.base): the one result format, the module put back in
the mode it was in, the two embedding names checked, labels outside the classes refused."""

import pytest
import torch

from vlp.errors import VLPError
from vlp.eval.base import EvalRun, EvalTask, label_ids


class Fixed(EvalTask):
    """A task kind whose evaluation returns fixed numbers and records the run it was given."""

    kind = "fixed"

    def evaluate(self, run: EvalRun):
        self.seen = (run.module.training, run.rank, run.world, run.batch_size, run.embeddings)
        return {"top1": 0.5}, {"num_classes": 2}, 7


@pytest.mark.parametrize("training", [True, False])
def test_run_returns_the_result_format_in_eval_mode_and_restores_the_mode(training):
    module = torch.nn.Linear(2, 2).train(training)
    task = Fixed("x-{000..003}.tar", name="mine", holdout={"fraction": 0.1, "seed": 3}, embeddings=["image", "text_zh"])
    result = task.run(module, data=None, rank=1, world=2, batch_size=8)
    assert task.seen == (False, 1, 2, 8, ("image", "text_zh"))  # evaluated in eval mode, on this rank
    assert module.training is training
    seconds = result.pop("seconds")
    assert isinstance(seconds, float) and 0 <= seconds < 60
    assert result == {"task": "mine", "kind": "fixed", "metrics": {"top1": 0.5}, "num_samples": 7,
                      "details": {"num_classes": 2},
                      "dataset": {"shards": "x-{000..003}.tar", "holdout": {"fraction": 0.1, "seed": 3}}}
    assert Fixed("a.tar").run(module, None)["task"] == "Fixed"  # named after its class by default


def test_embedding_names_and_labels_are_checked():
    with pytest.raises(VLPError, match=r"^embeddings names the two embeddings a task compares, e\.g\. \[image, text\]; "
                                       r"got \['image'\]$"):
        Fixed("a.tar", embeddings=["image"])
    task = Fixed("a.tar", name="t")
    assert label_ids(task, ["b", "a", "b"], ["a", "b"], "test").tolist() == [1, 0, 1]
    with pytest.raises(VLPError, match=r"^task t: train labels \['c', 'd'\] are not among its classnames$"):
        label_ids(task, ["a", "d", "c"], ["a", "b"], "train")

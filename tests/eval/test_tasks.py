"""Eval tasks as data (vlp.eval.tasks): every built-in task loads and runs, a user's task file on
its own shards, one-line errors for a bad file, and the printed summary of a result."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.eval.shards import eval_shard
from vlp.data.eval_set import EvalData
from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.eval.features import extract_features
from vlp.eval.tasks import load_task, task_summary


def test_builtin_task_runs_on_the_emoji_data(tiny_module):
    """The built-in zero-shot and retrieval tasks give the numbers computed by hand from the
    embeddings: the class of an image is its most similar class-name classifier (the emoji
    templates), its R@1 hit the most similar caption its own."""
    from vlp.data.datamodule import VLPDataModule

    data = VLPDataModule(image_size=32, context_length=16).eval_data()
    task = load_task("emoji_google_test_category")
    assert task.label_field == "category" and len(task.classnames) == 9
    result = task.run(tiny_module, data, batch_size=128)
    assert result["num_samples"] == 385 and result["details"] == {"num_classes": 9}
    feats = extract_features(tiny_module, "builtin:emoji/google/test-*.tar", data, label_field="category",
                             batch_size=128)
    templates = ["{}", "an emoji of {}", "a {} emoji"]
    with torch.no_grad():
        classifier = torch.stack([
            F.normalize(F.normalize(tiny_module.embed("text", data.texts([t.format(c) for t in templates])),
                                    dim=-1).mean(0), dim=0) for c in task.classnames])
    labels = torch.tensor([task.classnames.index(x) for x in feats.labels])
    predicted = (feats.image @ classifier.T).argmax(1)
    assert result["metrics"]["top1"] == pytest.approx((predicted == labels).float().mean().item(), abs=1e-6)
    assert set(result["metrics"]) == {"top1", "top5", "mean_per_class_recall"}

    retrieval = load_task("emoji_twitter_test_retrieval").run(tiny_module, data, batch_size=128)
    feats = extract_features(tiny_module, "builtin:emoji/twitter/test-*.tar", data, captions=["txt"],
                             batch_size=128)
    assert retrieval["num_samples"] == 385 and retrieval["details"] == {"num_texts": 385}
    assert torch.equal(feats.text_owner, torch.arange(385))  # one caption per image, in order
    similarity = feats.image @ feats.text.T
    m = retrieval["metrics"]
    assert m["image_to_text_R@1"] == int((similarity.argmax(1) == torch.arange(385)).sum()) / 385
    assert m["text_to_image_R@1"] == int((similarity.argmax(0) == torch.arange(385)).sum()) / 385
    assert set(m) == {f"{way}_R@{k}" for way in ("image_to_text", "text_to_image") for k in (1, 5, 10)}


def test_task_file_with_unknown_key_is_refused(tmp_path):
    (tmp_path / "t.yaml").write_text("class_path: vlp.eval.Retrieval\ninit_args:\n  shards: x.tar\n"
                                     "  label_feild: category\n")
    with pytest.raises(VLPError, match=r"^task file \S*t\.yaml: vlp\.eval\.Retrieval: unknown key 'label_feild' "
                                       r"\(it takes shards, captions, name, description, holdout, embeddings\)$"):
        load_task(str(tmp_path / "t.yaml"))


def test_every_builtin_task_loads():
    from vlp.eval.tasks import builtin_tasks

    names = builtin_tasks()
    for split in ("google_test", "twitter_train", "twitter_test"):
        for what in ("retrieval", "category", "subcategory"):
            assert f"emoji_{split}_{what}" in names
    for lang in ("zh", "ja", "de", "fr"):
        assert f"emoji_google_test_retrieval_{lang}" in names
    kinds = {load_task(n).kind for n in names}
    assert kinds == {"retrieval", "zeroshot", "linear_probe", "few_shot", "captioning"}
    assert len(load_task("emoji_google_test_subcategory").classnames) == 98


def test_task_fields_are_checked(tmp_path):
    def refused(name: str, text: str, message: str):
        (tmp_path / name).write_text(text)
        with pytest.raises(VLPError) as e:
            load_task(str(tmp_path / name))
        assert str(e.value) == f"task file {tmp_path / name}: {message}"

    refused("a.yaml", "class_path: vlp.eval.LinearProbe\ninit_args: {shards: x.tar, label_field: y}\n",
            "vlp.eval.LinearProbe: missing key(s) train_shards")
    refused("b.yaml", "class_path: vlp.eval.ZeroShotClassification\ninit_args: {shards: x.tar}\n",
            "vlp.eval.ZeroShotClassification: missing key(s) label_field")
    refused("c.yaml", "class_path: vlp.eval.FewShot\ninit_args: {shards: x.tar, label_field: y, train_shards: z, "
            "seeds: three}\n", "vlp.eval.FewShot: seeds: expected int, got three")
    refused("d.yaml", "class_path: vlp.eval.Retrieval\ninit_args: {shards: x.tar, captions: 3}\n",
            "vlp.eval.Retrieval: captions: expected one of [str, list[str]], got 3")
    refused("e.yaml", "class_path: vlp.eval.LinearProbe\ninit_args: {shards: x.tar, label_field: y, train_shards: z, "
            "val_fraction: 1.5}\n", "vlp.eval.LinearProbe: val_fraction must be in (0, 1), got 1.5")
    refused("f.yaml", "kind: zeroshot\nshards: x.tar\n", "`kind:` is the old task format; write `class_path: "
            "vlp.eval.ZeroShotClassification` and the other keys under `init_args:`")
    refused("g.yaml", "class_path: vlp.eval.Retrieval\nshards: x.tar\n",
            "expected class_path and init_args, got keys ['shards']")
    with pytest.raises(VLPError, match="unknown eval task 'emoji_google_test_retreival'; close: "):
        load_task("emoji_google_test_retreival")


def test_user_task_file_on_own_shards(tiny_module, tmp_path):
    shard = eval_shard(tmp_path / "data" / "val-000.tar", 12)
    (tmp_path / "prompts.txt").write_text("a picture of {}\n{c}\n")
    (tmp_path / "mine.yaml").write_text(f"class_path: vlp.eval.ZeroShotClassification\ninit_args:\n  shards: {shard}\n"
                                        "  label_field: label\n  templates: prompts.txt\n")
    task = load_task(str(tmp_path / "mine.yaml"))
    assert task.name == "mine" and task.templates == ["a picture of {}", "{c}"]
    result = task.run(tiny_module, EvalData(TextTokenizer(context_length=16), 32), batch_size=5)
    assert result["num_samples"] == 12 and result["details"]["num_classes"] == 3  # c0, c1, c2 found
    assert set(result["metrics"]) == {"top1", "mean_per_class_recall"}  # no top5 with 3 classes


def test_summary_prints_the_headline_metrics_of_a_result_in_percent():
    """One line: each headline metric of the result's kind, in its kind's order, as a percentage
    with one decimal; few-shot and unknown kinds show every *_top1; NaN metrics are left out."""
    retrieval = {"kind": "retrieval", "metrics": {
        "image_to_text_R@1": 0.25, "image_to_text_R@5": 0.5, "image_to_text_R@10": 0.75,
        "text_to_image_R@1": 0.125, "text_to_image_R@5": 1.0, "text_to_image_R@10": 1.0}}
    assert task_summary(retrieval) == ("image_to_text_R@1 25.0%  image_to_text_R@5 50.0%  "
                                       "text_to_image_R@1 12.5%  text_to_image_R@5 100.0%")
    zeroshot = {"kind": "zeroshot", "metrics": {"mean_per_class_recall": 0.5, "top1": 2 / 3}}
    assert task_summary(zeroshot) == "top1 66.7%  mean_per_class_recall 50.0%"
    few = {"kind": "few_shot", "metrics": {"zeroshot_top1": 0.1, "text_1shot_top1": 0.2,
                                           "text_1shot_top1_std": 0.01, "random_1shot_top1": math.nan}}
    assert task_summary(few) == "zeroshot_top1 10.0%  text_1shot_top1 20.0%"
    captioning = {"kind": "captioning", "metrics": {"exact_match": 0.0, "bleu4": 0.5, "cider": 1.25}}
    assert task_summary(captioning) == "cider 125.0%  bleu4 50.0%  exact_match 0.0%"
    assert task_summary({"kind": "mine", "metrics": {"a_top1": 0.5, "b": 0.25}}) == "a_top1 50.0%"

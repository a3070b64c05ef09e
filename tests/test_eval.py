import torch
import torch.nn.functional as F

from vlp.eval.retrieval import retrieval_metrics
from vlp.eval.tasks import load_task, run_task
from vlp.eval.zeroshot import classification_metrics, zeroshot_classifier


def test_retrieval_recall_by_hand():
    # 3 images, 4 texts; texts 0,1 belong to image 0, text 2 to image 1, text 3 to image 2.
    image = torch.eye(3)
    text = torch.tensor([[0.1, 1.0, 0.0],   # closest to image 1 (wrong), then image 0
                         [0.9, 0.1, 0.0],   # image 0 (right)
                         [0.0, 0.1, 1.0],   # image 2 (wrong), then image 1
                         [0.0, 0.2, 0.9]])  # image 2 (right)
    owner = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(image, text, owner, ks=(1, 2), chunk=2)
    # image->text top-1: img0 -> text1 (own), img1 -> text0 (not own), img2 -> text2 (not own)
    assert m["image_to_text_R@1"] == 1 / 3
    # top-2: img1 -> {text0, text3}: miss; img2 -> {text2, text3}: hit
    assert m["image_to_text_R@2"] == 2 / 3
    # text->image top-1: t0 -> img1 (miss), t1 -> img0 (hit), t2 -> img2 (miss), t3 -> img2 (hit)
    assert m["text_to_image_R@1"] == 2 / 4
    # top-2: t0 -> {1, 0}: hit; t2 -> {2, 1}: hit
    assert m["text_to_image_R@2"] == 1.0


def test_retrieval_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(50, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(100, 8, generator=g), dim=-1)
    owner = torch.arange(100) // 2
    assert retrieval_metrics(image, text, owner, chunk=7) == retrieval_metrics(image, text, owner, chunk=1000)


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1.0, 3.0, 0.0], [2.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(logits, labels, ks=(1, 2))
    assert m["top1"] == 2 / 4  # rows 0 and 2
    assert m["top2"] == 3 / 4  # row 1: top2 = {2, 1} hit; row 3: {0, 1} miss
    # per class recall: class 0: 1/1, class 1: 1/2, class 2: 0/1
    assert abs(m["mean_per_class_recall"] - (1 + 0.5 + 0) / 3) < 1e-6


def test_zeroshot_classifier_is_renormalised_mean_of_template_embeddings():
    def encode(tokens):  # fake text encoder: token ids -> vector
        return tokens[:, :3].float()

    def tokenizer(texts):
        table = {"a cat": [1, 0, 0], "cat!": [1, 1, 0], "a dog": [0, 0, 1], "dog!": [0, 2, 1]}
        return torch.tensor([table[t] for t in texts])

    w = zeroshot_classifier(encode, tokenizer, ["cat", "dog"], ["a {}", "{}!"])
    cat = F.normalize(torch.tensor([1.0, 0, 0]), dim=0) + F.normalize(torch.tensor([1.0, 1, 0]), dim=0)
    assert torch.allclose(w[0], F.normalize(cat / 2, dim=0), atol=1e-6)
    assert torch.allclose(w.norm(dim=-1), torch.ones(2))


def test_builtin_task_runs_on_the_emoji_data(tiny_module):
    from vlp.data.datamodule import VLPDataModule

    data = VLPDataModule(image_size=32, context_length=16)
    task = load_task("emoji_google_test_category")
    assert task.label_field == "category" and len(task.classnames) == 9
    result = run_task(tiny_module, task, data, batch_size=128)
    assert result["num_samples"] == 385
    assert 0.0 <= result["metrics"]["top1"] <= 1.0
    retrieval = run_task(tiny_module, load_task("emoji_twitter_test_retrieval"), data, batch_size=128)
    assert set(retrieval["metrics"]) >= {"image_to_text_R@1", "text_to_image_R@5"}


def test_task_file_with_unknown_key_is_refused(tmp_path):
    import pytest

    from vlp.errors import VLPError

    (tmp_path / "t.yaml").write_text("kind: retrieval\nshards: x.tar\nlabel_feild: category\n")
    with pytest.raises(VLPError, match="unknown keys \\['label_feild'\\]"):
        load_task(str(tmp_path / "t.yaml"))

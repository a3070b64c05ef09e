import json
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlp.data.eval_set import EvalData, EvalStream
from vlp.data.shard_writer import write_shard
from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.eval.features import extract_features
from vlp.eval.few_shot import LinearHead, few_shot, sample_shots, text_init_head
from vlp.eval.linear_probe import fit_logistic_regression, linear_probe
from vlp.eval.metrics import classification_metrics
from vlp.eval.retrieval import retrieval_metrics
from vlp.eval.tasks import load_task
from vlp.eval.templates import IMAGENET80, fill, resolve_templates
from vlp.eval.zeroshot import zeroshot_classifier


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

    data = VLPDataModule(image_size=32, context_length=16).eval_data()
    task = load_task("emoji_google_test_category")
    assert task.label_field == "category" and len(task.classnames) == 9
    result = task.run(tiny_module, data, batch_size=128)
    assert result["num_samples"] == 385
    assert 0.0 <= result["metrics"]["top1"] <= 1.0
    retrieval = load_task("emoji_twitter_test_retrieval").run(tiny_module, data, batch_size=128)
    assert set(retrieval["metrics"]) >= {"image_to_text_R@1", "text_to_image_R@5"}


def test_task_file_with_unknown_key_is_refused(tmp_path):
    (tmp_path / "t.yaml").write_text("class_path: vlp.eval.Retrieval\ninit_args:\n  shards: x.tar\n"
                                     "  label_feild: category\n")
    with pytest.raises(VLPError, match=r"^task file \S*t\.yaml: vlp\.eval\.Retrieval: unknown key 'label_feild' "
                                       r"\(it takes shards, captions, name, description, holdout, embeddings\)$"):
        load_task(str(tmp_path / "t.yaml"))


def test_classification_metrics_agree_with_torchmetrics():
    from torchmetrics.functional.classification import multiclass_accuracy

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 7, generator=g)
    labels = torch.randint(0, 7, (200,), generator=g)
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(multiclass_accuracy(logits, labels, 7, average="micro").item())
    assert m["top5"] == pytest.approx(multiclass_accuracy(logits, labels, 7, average="micro", top_k=5).item())
    assert m["mean_per_class_recall"] == pytest.approx(
        multiclass_accuracy(logits, labels, 7, average="macro").item())


def test_template_sets_and_files(tmp_path):
    assert len(IMAGENET80) == len(set(IMAGENET80)) == 80 and all("{}" in t for t in IMAGENET80)
    assert fill("a photo of a {c}.", "cat") == "a photo of a cat." == fill("a photo of a {}.", "cat")
    (tmp_path / "t.txt").write_text("a {} here\n\nan {c} there\n")
    assert resolve_templates("t.txt", tmp_path) == ["a {} here", "an {c} there"]
    with pytest.raises(VLPError, match="has no"):
        resolve_templates(["no slot"])
    with pytest.raises(VLPError, match="neither a template set"):
        resolve_templates("imagenet81")


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


def _shard(path, n, captions=True):
    """``n`` samples: a coloured image, a caption and json with a label and multilingual labels."""
    import io

    from PIL import Image

    samples = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (20 * i % 255, 40, 200)).save(buf, format="PNG")
        meta = {"label": f"c{i % 3}", "labels": {"en": f"thing {i}", "de": f"ding {i}"}, "tags": [f"t{i}", "x"]}
        sample = {"png": buf.getvalue(), "json": json.dumps(meta).encode()}
        if captions:
            sample["txt"] = f"caption {i}".encode()
        samples.append((f"{i:05d}", sample))
    write_shard(path, samples)
    return str(path)


def test_eval_stream_splits_samples_between_readers_without_overlap(tmp_path):
    shards = [_shard(tmp_path / "a.tar", 7), _shard(tmp_path / "b.tar", 6)]
    seen, sizes = [], []
    for rank in range(3):
        stream = EvalStream(shards, lambda im: torch.zeros(1), TextTokenizer(context_length=8), 2,
                            captions=["txt", "tags"], label_field="label", rank=rank, world=3)
        batches = list(stream)
        sizes.append([len(b["index"]) for b in batches])
        for batch in batches:
            seen += batch["index"].tolist()
            # every sample brings its caption and its two tags, owned by that sample (-1: padding)
            assert batch["text_owner"].tolist() == [i for i in batch["index"].tolist() for _ in range(3)]
            assert batch["text"].shape[0] == 3 * len(batch["index"])
    # 13 samples on 3 ranks: 5, 4 + 1 padding row, 4 + 1 padding row; the same batches everywhere
    assert sizes == [[2, 2, 1]] * 3
    assert sorted(seen) == [-1, -1, *range(13)]


def test_data_workers_split_a_rank_share_by_batch_in_order(tmp_path):
    from torch.utils.data import DataLoader

    shard = _shard(tmp_path / "a.tar", 13)
    for rank, expected in ((0, [[0, 2], [4, 6], [8, 10], [12]]), (1, [[1, 3], [5, 7], [9, 11], [-1]])):
        stream = EvalStream([shard], lambda im: torch.zeros(1), TextTokenizer(context_length=8), 2, rank=rank, world=2)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        assert [b["index"].tolist() for b in loader] == expected  # batch j from worker j % 2


def test_eval_sees_transparent_images_as_training_does(tmp_path):
    """A transparent PNG is composited on white by the eval stream, as by the training decoder."""
    import io
    from collections import Counter

    import numpy as np
    from PIL import Image

    from vlp.data.fields import SampleContext

    im = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    im.paste((200, 30, 30, 255), (4, 4, 12, 12))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    write_shard(tmp_path / "a.tar", [("00000", {"png": buf.getvalue(), "txt": b"a red square"})])
    to_array = lambda im: torch.from_numpy(np.asarray(im).copy())  # noqa: E731
    batch = next(iter(EvalStream([str(tmp_path / "a.tar")], to_array, TextTokenizer(context_length=8), 1,
                                 captions=["txt"])))
    counts = Counter()
    trained = SampleContext({"png": buf.getvalue()}, counts).image()  # what every training image field reads
    assert counts["alpha_on_white"] == 1
    assert torch.equal(batch["image"][0], to_array(trained))
    assert batch["image"][0, 0, 0].tolist() == [255, 255, 255] and batch["image"][0, 8, 8].tolist() == [200, 30, 30]


def test_missing_caption_field_is_a_clear_error(tmp_path):
    shard = _shard(tmp_path / "a.tar", 3, captions=False)
    stream = EvalStream([shard], lambda im: torch.zeros(1), TextTokenizer(context_length=8), 2, captions=["txt"])
    with pytest.raises(VLPError, match="field 'txt' not found"):
        list(stream)


def test_multilingual_and_multi_caption_retrieval(tiny_module, tmp_path):
    shard = _shard(tmp_path / "a.tar", 10)
    data = EvalData(TextTokenizer(context_length=16), 32)
    feats = extract_features(tiny_module, [shard], data, captions=["labels.en", "labels.de"], batch_size=4)
    assert feats.image.shape[0] == 10 and feats.text.shape[0] == 20
    assert feats.text_owner.tolist() == [i // 2 for i in range(20)]
    # the German caption of sample 3 is embedded as the text "ding 3"
    ref = tiny_module.embed("text", TextTokenizer(context_length=16)(["ding 3"]))
    assert torch.allclose(feats.text[7], ref[0], atol=1e-5)


def test_logistic_regression_reaches_its_optimum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(1)
    w, b = fit_logistic_regression(x, y, 3, weight_decay=1e-2)
    w, b = w.double().requires_grad_(), b.double().requires_grad_()
    loss = F.cross_entropy(x.double() @ w.T + b, y) + 0.5 * 1e-2 * w.pow(2).sum()
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert gw.abs().max() < 1e-4 and gb.abs().max() < 1e-4  # stationary point of a convex loss
    assert ((x @ w.detach().float().T + b.detach().float()).argmax(1) == y).float().mean() > 0.9


def test_linear_probe_picks_the_weight_decay_by_validation():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=g) * 2
    y = torch.randint(0, 4, (200,), generator=g)
    x = centers[y] + torch.randn(200, 6, generator=g)
    metrics, details = linear_probe(x[:150], y[:150], x[150:], y[150:], 4, [1e-4, 1e-2, 10.0])
    assert set(details["val_top1"]) == {"0.0001", "0.01", "10.0"}
    assert details["val_top1"][str(details["weight_decay"])] == max(details["val_top1"].values())
    assert metrics["top1"] > 0.7


def test_sample_shots_takes_k_per_class_reproducibly():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    idx = sample_shots(labels, 2, seed=1)
    assert torch.bincount(labels[idx]).tolist() == [2, 2, 2]
    assert torch.equal(idx, sample_shots(labels, 2, seed=1))
    assert torch.bincount(labels[sample_shots(labels, 4, seed=0)]).tolist() == [3, 2, 4]


def test_few_shot_reads_the_temperature_of_the_objective_that_compares_its_names(tiny_module):
    """The scale as the loss uses it (clamped), of the objective comparing the task's two names
    (not the first objective with a scale); CLIP's cap 100 when none compares them."""
    import math

    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss, SigmoidLoss

    towers = dict(tiny_module.towers)
    clamped = ContrastiveLoss(init_logit_scale=5.0)  # above ln 100: clamped where used
    other = SigmoidLoss(name="other", b="text_2", init_logit_scale=1.0)
    module = VLPModule(towers, [other, clamped], share={"text_2": "text"})
    assert module.similarity_scale("image", "text") == pytest.approx(100.0)
    assert module.similarity_scale("text_2", "image") == pytest.approx(math.e)
    assert module.similarity_scale("image", "image") == 100.0


def test_class_name_head_is_the_zeroshot_classifier_before_training():
    g = torch.Generator().manual_seed(0)
    classifier = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    x = F.normalize(torch.randn(30, 8, generator=g), dim=-1)
    head = text_init_head(classifier, logit_scale=30.0)
    assert torch.allclose(head(x), 30.0 * x @ classifier.T, atol=1e-6)
    # few-shot with 0 steps: the text-initialised head scores exactly the zero-shot accuracy
    y = torch.randint(0, 5, (30,), generator=g)
    m, _ = few_shot(x, y, x, y, classifier, 30.0, shots=[1], seeds=2, inits=["text", "random"], steps=0,
                    lr=1e-2, weight_decay=0.0)
    assert m["text_1shot_top1"] == m["zeroshot_top1"] and m["text_1shot_top1_std"] == 0.0
    # training on the shots moves the heads away from their start
    m2, _ = few_shot(x, y, x, y, classifier, 30.0, shots=[5], seeds=1, inits=["text"], steps=50, lr=1e-2,
                     weight_decay=0.0)
    assert m2["text_5shot_top1"] > m["zeroshot_top1"]
    assert isinstance(LinearHead(8, 5, 1.0, generator=g).weight, torch.nn.Parameter)


def _tiny(seed=0):
    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss
    from vlp.towers import TextTransformer, TimmImageTower

    torch.manual_seed(seed)
    image = TimmImageTower("vit_tiny_patch16_224", embed_dim=64, image_size=32,
                           model_kwargs=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2))
    text = TextTransformer(context_length=16, width=64, layers=2, heads=2, embed_dim=64)
    return VLPModule({"image": image, "text": text}, [ContrastiveLoss()])


def _sharded_tasks(tmp_path):
    from vlp.eval import FewShot, LinearProbe, Retrieval, ZeroShotClassification

    test = "builtin:emoji/twitter/test-*.tar"
    train = "builtin:emoji/twitter/train-*.tar"
    return [
        Retrieval(test, captions=["txt", "labels.de"], name="r"),
        ZeroShotClassification(test, label_field="subcategory", templates="emoji", name="z"),
        LinearProbe(test, label_field="category", train_shards=train, weight_decays=[1e-4, 1e-2], name="p"),
        FewShot(test, label_field="category", train_shards=train, templates="emoji", shots=[2], seeds=2, steps=10,
                name="f"),
    ]


def _eval_rank(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    module = _tiny()
    data = EvalData(TextTokenizer(context_length=16), 32)
    results = [t.run(module, data, rank, world, batch_size=64) for t in _sharded_tasks(out_dir)]
    feats = extract_features(module, "builtin:emoji/twitter/test-*.tar", data, captions=["txt"], batch_size=64,
                             rank=rank, world=world)
    torch.save({"results": results, "image": feats.image, "text": feats.text}, os.path.join(out_dir, f"r{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    # leave without C++ static destructors: gloo's threads otherwise abort the process at exit
    # now and then ("terminate called without an active exception"), after the work is saved
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_sharded_eval_equals_single_process(tmp_path):
    mp.spawn(_eval_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    module = _tiny()
    data = EvalData(TextTokenizer(context_length=16), 32)
    single = [t.run(module, data, batch_size=128) for t in _sharded_tasks(tmp_path)]
    feats = extract_features(module, "builtin:emoji/twitter/test-*.tar", data, captions=["txt"], batch_size=128)
    for rank in range(2):
        got = torch.load(tmp_path / f"r{rank}.pt", weights_only=False)
        assert torch.allclose(got["image"], feats.image, atol=1e-5)
        assert torch.allclose(got["text"], feats.text, atol=1e-5)
        for mine, ref in zip(got["results"], single):
            assert mine["num_samples"] == ref["num_samples"] == 385
            assert mine["metrics"] == pytest.approx(ref["metrics"], abs=1e-6), mine["task"]


def _uneven_tasks(root):
    """Tasks on a 9-sample eval set and a 7-sample training set (written by the test): on 2 ranks
    with batches of 2, rank 0 holds 5 test samples (3 batches), rank 1 4 (2 batches before padding)."""
    from vlp.eval import FewShot, LinearProbe, Retrieval, ZeroShotClassification

    test, train = str(root / "test.tar"), str(root / "train.tar")
    templates = ["a {}", "{} here"]
    return [
        Retrieval(test, captions=["txt", "tags"], name="r"),
        ZeroShotClassification(test, label_field="label", templates=templates, name="z"),  # 3 classes
        LinearProbe(test, label_field="label", train_shards=train, weight_decays=[1e-3], name="p"),
        FewShot(test, label_field="label", train_shards=train, templates=templates, shots=[1], seeds=1, steps=3,
                name="f"),
    ]


def _counting(module) -> dict:
    """Count the module's forward passes (calls of embed, by name)."""
    calls = {"image": 0, "text": 0}
    embed = module.embed

    def counted(name, x):
        calls[name] += 1
        return embed(name, x)

    module.embed = counted
    return calls


def _uneven_rank(rank, world, init_file, out_dir):
    import pathlib

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    module = _tiny()
    calls = _counting(module)
    data = EvalData(TextTokenizer(context_length=16), 32)
    results, counts = [], []
    for task in _uneven_tasks(pathlib.Path(out_dir)):
        results.append(task.run(module, data, rank, world, batch_size=2))
        counts.append(dict(calls))
        calls.update(image=0, text=0)
    torch.save({"results": results, "calls": counts}, os.path.join(out_dir, f"uneven{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_ranks_with_unequal_shares_run_equal_forward_passes(tmp_path):
    """Sharded parameters need every rank in every forward: ranks whose shares differ (9 and 7
    samples, 3 classes, on 2 ranks with batches of 2) pad to the same number of forward passes
    and still give the one-process metrics."""
    _shard(tmp_path / "test.tar", 9), _shard(tmp_path / "train.tar", 7)
    tasks = _uneven_tasks(tmp_path)
    streams = [EvalStream([tasks[0].shards], lambda im: torch.zeros(1), TextTokenizer(context_length=8), 2, rank=r,
                          world=2) for r in range(2)]
    assert [sum(int((b["index"] >= 0).sum()) for b in stream) for stream in streams] == [5, 4]  # before padding
    mp.spawn(_uneven_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    module = _tiny()
    single = [t.run(module, EvalData(TextTokenizer(context_length=16), 32), batch_size=4) for t in tasks]
    ranks = [torch.load(tmp_path / f"uneven{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["calls"] == ranks[1]["calls"]
    # per rank: 3 test batches, 2 train batches, ceil(3 classes / 2) class embeddings
    assert ranks[0]["calls"] == [{"image": 3, "text": 3}, {"image": 3, "text": 2}, {"image": 5, "text": 0},
                                 {"image": 5, "text": 2}]
    for got in ranks:
        for mine, ref in zip(got["results"], single):
            assert mine["num_samples"] == ref["num_samples"] == 9
            counts = {k: v for k, v in ref["details"].items() if k.startswith("num_")}
            assert counts and {k: mine["details"][k] for k in counts} == counts
            assert mine["metrics"] == pytest.approx(ref["metrics"], abs=1e-6), mine["task"]


def test_user_task_file_on_own_shards(tiny_module, tmp_path):
    shard = _shard(tmp_path / "data" / "val-000.tar", 12)
    (tmp_path / "prompts.txt").write_text("a picture of {}\n{c}\n")
    (tmp_path / "mine.yaml").write_text(f"class_path: vlp.eval.ZeroShotClassification\ninit_args:\n  shards: {shard}\n"
                                        "  label_field: label\n  templates: prompts.txt\n")
    task = load_task(str(tmp_path / "mine.yaml"))
    assert task.name == "mine" and task.templates == ["a picture of {}", "{c}"]
    result = task.run(tiny_module, EvalData(TextTokenizer(context_length=16), 32), batch_size=5)
    assert result["num_samples"] == 12 and result["details"]["num_classes"] == 3  # c0, c1, c2 found
    assert set(result["metrics"]) == {"top1", "mean_per_class_recall"}  # no top5 with 3 classes


def test_a_truncated_eval_shard_is_an_error_naming_it(tiny_module, tmp_path):
    import tarfile

    shard = _shard(tmp_path / "cut.tar", 6)
    with tarfile.open(shard) as tar:
        member = tar.getmembers()[10]  # inside the image of the 4th sample
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: member.offset_data + 10])
    with pytest.raises(VLPError, match="eval shard unreadable: .*cut.tar"):
        extract_features(tiny_module, [shard], EvalData(TextTokenizer(context_length=16), 32), captions=["txt"])


def test_zeroshot_scored_by_the_decoder_is_the_mean_template_log_likelihood(tmp_path):
    from PIL import Image

    from tests.test_generation import tiny_coca
    from vlp.eval.zeroshot import ZeroShotClassification
    from vlp.generation import Captioner

    tok = TextTokenizer(context_length=10)
    module = tiny_coca(tok.spec, width=32)
    shards = _shard(tmp_path / "s.tar", 7)
    data = EvalData(tok, 32)
    templates = ["{}", "a {} thing"]
    task = ZeroShotClassification(shards, "label", None, templates, scorer="decoder")
    result = task.run(module, data, batch_size=3)
    # by hand: every image against every filled template, averaged per class
    images = torch.stack([data.transform()(Image.new("RGB", (16, 16), (20 * i % 255, 40, 200)))
                          for i in range(7)])
    classes = ["c0", "c1", "c2"]
    ll = Captioner(module).log_likelihood(images, tok([t.format(c) for c in classes for t in templates]))
    scores = ll.view(7, 3, 2).mean(2)
    expected = classification_metrics(scores, torch.tensor([i % 3 for i in range(7)]))
    assert result["metrics"] == pytest.approx(expected)
    assert result["num_samples"] == 7 and result["details"]["scorer"] == "decoder"
    contrastive = ZeroShotClassification(shards, "label", None, templates).run(module, data, batch_size=3)
    assert contrastive["num_samples"] == 7
    with pytest.raises(VLPError, match="unknown zero-shot scorer"):
        ZeroShotClassification(shards, "label", scorer="captions")


def test_zeroshot_decoder_scorer_needs_a_caption_decoder(tiny_module, tmp_path):
    from vlp.eval.zeroshot import ZeroShotClassification

    task = ZeroShotClassification(_shard(tmp_path / "s.tar", 3), "label", templates="name", scorer="decoder")
    with pytest.raises(VLPError, match="a caption decoder named 'decoder' in model.heads"):
        task.run(tiny_module, EvalData(TextTokenizer(context_length=16), 32))

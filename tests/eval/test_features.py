"""Embeddings of an eval set (vlp.eval.features): several captions per sample in field order,
a truncated shard named in the error, and on several ranks equal forward passes on every rank
(equal shares, padded) and, once gathered, the embeddings and every task's metrics of one process."""

import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.eval.shards import eval_shard
from vlp.data.eval_set import EvalData, EvalStream
from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.eval.features import extract_features


def test_multilingual_and_multi_caption_retrieval(tiny_module, tmp_path):
    shard = eval_shard(tmp_path / "a.tar", 10)
    data = EvalData(TextTokenizer(context_length=16), 32)
    feats = extract_features(tiny_module, [shard], data, captions=["labels.en", "labels.de"], batch_size=4)
    assert feats.image.shape[0] == 10 and feats.text.shape[0] == 20
    assert feats.text_owner.tolist() == [i // 2 for i in range(20)]
    # the German caption of sample 3 is embedded as the text "ding 3"
    ref = tiny_module.embed("text", TextTokenizer(context_length=16)(["ding 3"]))
    assert torch.allclose(feats.text[7], ref[0], atol=1e-5)


def test_a_truncated_eval_shard_is_an_error_naming_it(tiny_module, tmp_path):
    import tarfile

    shard = eval_shard(tmp_path / "cut.tar", 6)
    with tarfile.open(shard) as tar:
        member = tar.getmembers()[10]  # inside the image of the 4th sample
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: member.offset_data + 10])
    with pytest.raises(VLPError, match="eval shard unreadable: .*cut.tar"):
        extract_features(tiny_module, [shard], EvalData(TextTokenizer(context_length=16), 32), captions=["txt"])


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
    eval_shard(tmp_path / "test.tar", 9), eval_shard(tmp_path / "train.tar", 7)
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

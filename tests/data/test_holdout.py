"""The key-hash hold-out of the training stream (vlp.data.holdout, data.holdout / data.val_shards):
disjoint from training and together the whole set, stable, of the asked size, resumed exactly,
clear errors for bad settings."""

import math

import pytest

from tests.data.streams import assert_resumes_exactly, collect, datamodule, source
from vlp.data.eval_set import set_samples
from vlp.data.holdout import Holdout
from vlp.errors import VLPError


def _caption(key: str) -> str:
    """The caption tests.data.streams.source writes for a key (``a00017`` -> ``a 17``)."""
    return f"{key[0]} {int(key[1:])}"


def test_the_hold_out_and_the_training_stream_are_disjoint_and_make_up_the_whole_set(tmp_path):
    a = source(tmp_path, "a", 4, 50)
    everything = {_caption(s["__key__"]) for s in set_samples(sorted(map(str, (tmp_path / "a").glob("*.tar"))))}
    assert len(everything) == 200
    # 2 workers, 2 epochs of ~2.5 passes over each worker's shards: every training key comes up in each
    dm = datamodule(a, num_workers=2, batch_size=10, train_num_samples=400, holdout={"fraction": 0.2, "seed": 3})
    loader = dm.train_dataloader()
    assert loader.num_workers == 2
    epochs = [{c for b in collect(dm, loader) for c in b["caption"]} for _ in range(2)]
    val = dm.validation_set()
    held = [_caption(s["__key__"]) for s in set_samples(val.shards, val.holdout)]
    assert len(held) == len(set(held)) and 0 < len(held) < 200
    for trained in epochs:
        assert trained.isdisjoint(held)
        assert trained | set(held) == everything
    # held out = skipped before decoding, counted apart from the bad and from the samples read
    assert dm.stats["heldout"] > 0 and dm.stats["seen"] == 2 * 400
    assert not any(dm.stats[k] for k in ("no_image", "corrupt_image", "missing_caption"))
    assert dm.data_metrics()["data/heldout"] == dm.stats["heldout"]
    assert dm.data_metrics()["data/skipped"] == 0
    assert f"held out {dm.stats['heldout']} (validation)" in dm.summary()
    # the same hold-out whatever reads it: one worker, another batch size
    again = datamodule(a, num_workers=0, batch_size=20, train_num_samples=400, holdout={"fraction": 0.2, "seed": 3})
    assert {c for b in collect(again) for c in b["caption"]} == epochs[0]


def test_the_hold_out_is_a_fixed_hash_of_seed_and_key_of_the_asked_size():
    keys = [f"{i:09d}" for i in range(20000)]
    for fraction, seed in ((0.05, 0), (0.3, 7)):
        share = sum(Holdout(fraction, seed).held_out(k) for k in keys) / len(keys)
        assert abs(share - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / len(keys)), share
    first = {k for k in keys if Holdout(0.1, 0).held_out(k)}
    assert first != {k for k in keys if Holdout(0.1, 1).held_out(k)}  # the seed picks another hold-out
    # a larger fraction holds out a superset (same hash, higher bar)
    assert first <= {k for k in keys if Holdout(0.2, 0).held_out(k)}
    # blake2b of "seed:key", never the salted hash(): pinned values, the same in every process
    assert [Holdout(0.5, 0).held_out(k) for k in keys[:6]] == [False, False, True, True, True, True]
    assert [Holdout(0.5, 1).held_out(k) for k in keys[:6]] == [True, True, True, True, True, False]
    assert Holdout.of(0.05) == Holdout(0.05, 0) and Holdout.of({"fraction": 0.1, "seed": 2}) == Holdout(0.1, 2)


def test_the_epoch_shrinks_by_the_held_out_fraction(tmp_path):
    a = source(tmp_path, "a", 4, 50)
    assert datamodule(a).epoch_batches() == 10
    assert datamodule(a, holdout=0.2).epoch_batches() == 8  # round(200 x 0.8) / 20
    assert datamodule(a, holdout=0.2, train_num_samples=200).epoch_batches() == 10  # an explicit epoch stays
    b = source(tmp_path, "b", 2, 50)
    assert datamodule([a, {"shards": b, "repeat": 2}], holdout=0.5).epoch_batches() == 400 // 2 // 20


def test_a_stream_with_a_hold_out_resumes_exactly(tmp_path):
    """In-process resume (loader_state -> load_loader_state) with 2 workers, mid-epoch and at the
    end of an epoch: the held-out samples count as read, so the position stays exact."""
    a, b = source(tmp_path, "a", 4, 30), source(tmp_path, "b", 2, 30)
    spec = [{"shards": a, "weight": 0.6}, {"shards": b, "weight": 0.4}]
    kw = {"num_workers": 2, "batch_size": 10, "train_num_samples": 120, "holdout": {"fraction": 0.25, "seed": 1}}

    full, whole, states = assert_resumes_exactly(spec, kw, stops=(5, 12))
    assert len(full) == 24 and whole.stats["heldout"] > 0
    assert all(state["holdout"] == {"fraction": 0.25, "seed": 1} for state in states)


def test_a_checkpoint_with_another_hold_out_restarts_at_the_next_epoch(tmp_path):
    a = source(tmp_path, "a", 2, 20)
    dm = datamodule(a, batch_size=10, holdout=0.1)
    collect(dm, n=1)
    state = dm.loader_state()
    for other in (datamodule(a, batch_size=10, holdout={"fraction": 0.1, "seed": 1}), datamodule(a, batch_size=10)):
        other.train_dataloader()
        with pytest.warns(UserWarning, match=r"cannot resume exactly: the checkpoint held out \{'fraction': 0.1"):
            other.load_loader_state(state)
        assert other._next_epoch == 1


def test_val_shards_are_the_validation_set_and_leave_training_alone(tmp_path):
    a, v = source(tmp_path, "a", 2, 20), source(tmp_path, "v", 1, 7)
    plain = [c for b in collect(datamodule(a, batch_size=10)) for c in b["caption"]]
    dm = datamodule(a, batch_size=10, val_shards=v, caption_key="tags", caption_templates=["a {}"])
    assert [c for b in collect(datamodule(a, batch_size=10, val_shards=v)) for c in b["caption"]] == plain
    val = dm.validation_set()
    assert val.holdout is None and len(val.shards) == 1 and val.captions == ["tags"] and val.templates == ["a {}"]
    assert datamodule(a).validation_set() is None


@pytest.mark.parametrize("kw, message", [
    ({"holdout": 0}, r"^data.holdout: fraction must be a number in \(0, 1\), got 0$"),
    ({"holdout": 1.0}, r"^data.holdout: fraction must be a number in \(0, 1\), got 1.0$"),
    ({"holdout": -0.1}, r"^data.holdout: fraction must be a number in \(0, 1\), got -0.1$"),
    ({"holdout": {"fraction": 1.5, "seed": 0}}, r"^data.holdout: fraction must be a number in \(0, 1\), got 1.5$"),
    ({"holdout": {"seed": 1}}, r"^data.holdout: no fraction given"),
    ({"holdout": {"fraction": 0.1, "sed": 1}}, r"^data.holdout: unknown key\(s\) sed; it takes fraction, seed$"),
    ({"holdout": {"fraction": 0.1, "seed": "x"}}, r"^data.holdout: seed must be an integer, got 'x'$"),
    ({"val_shards": "{missing}/*.tar"}, r"^data.val_shards: shard path '.*/missing/\*\.tar' matches no file$"),
    ({"holdout": 0.1, "val_shards": "{a}"}, r"^give data.holdout or data.val_shards as the validation set, not both$"),
])
def test_a_bad_validation_setting_is_a_one_line_error(tmp_path, kw, message):
    a = source(tmp_path, "a", 1, 2)
    kw = {k: v.replace("{a}", a).replace("{missing}", str(tmp_path / "missing")) if isinstance(v, str) else v
          for k, v in kw.items()}
    with pytest.raises(VLPError, match=message) as info:
        datamodule(a, **kw)
    assert "\n" not in str(info.value)


def test_the_cli_takes_a_hold_out_as_a_fraction_or_a_mapping():
    from tests.conftest import TINY
    from vlp.cli import run_cli

    base = ["--recipe", "clip_tiny", *TINY, "--trainer.logger", "false"]
    assert run_cli([*base, "--data.holdout", "0.05"], run=False).datamodule.holdout == Holdout(0.05, 0)
    cli = run_cli([*base, "--data.holdout", "{fraction: 0.1, seed: 2}"], run=False)
    assert cli.datamodule.holdout == Holdout(0.1, 2)
    with pytest.raises(VLPError, match=r"^data.holdout: fraction must be a number in \(0, 1\), got 1.5$"):
        run_cli([*base, "--data.holdout", "1.5"], run=False)

"""The exclusion list of the training stream (vlp.data.exclusions, data.exclude_keys): entries by
shard and key or by key alone, skipped before decoding and counted, exact resume, the file format
and its one-line errors. (The list `vlp overlap` writes: tests/test_overlap.py.)"""

import os
import warnings

import pytest

from tests.data.streams import assert_resumes_exactly, collect, datamodule, source
from vlp.data.exclusions import Exclusions, canonical_shard, format_entry, portable_shard
from vlp.data.shards import builtin_root, expand_shards
from vlp.errors import VLPError


def _caption(key: str) -> str:
    """The caption tests.data.streams.source writes for a key (``a00017`` -> ``a 17``)."""
    return f"{key[0]} {int(key[1:])}"


def _listing(tmp_path, lines: list[str], name: str = "exclude.txt") -> str:
    path = tmp_path / name
    path.write_text("# a comment\n\n" + "\n".join(lines) + "\n")
    return str(path)


def test_entries_by_shard_and_key_or_by_key_skip_exactly_those_samples(tmp_path):
    a = source(tmp_path, "a", 2, 20)  # a00000..a00039 in a/000.tar, a/001.tar
    shards = expand_shards(a)
    # a00003 and a00010 in the first shard (they are there), a00025 named with the first shard but
    # in the second (kept), a00030 by key alone, a00021 with a relative path to the second shard
    rel = os.path.relpath(shards[1])
    listing = _listing(tmp_path, [f"a00003\t{shards[0]}", f"a00010\t{shards[0]}", f"a00025\t{shards[0]}", "a00030",
                                  f"a00021\t{rel}"])
    dm = datamodule(a, batch_size=6, exclude_keys=listing)
    # the epoch shrinks by the entries that name a training shard (4: the key-only one is not counted,
    # a00025's is, though that shard does not hold it)
    assert dm.epoch_batches() == (40 - 4) // 6
    got = [c for b in collect(dm) for c in b["caption"]]
    assert len(got) == 36 and len(set(got)) == 36
    assert not {"a 3", "a 10", "a 30", "a 21"} & set(got) and "a 25" in got
    assert dm.stats["excluded"] == 4 and dm.stats["seen"] == 36
    assert not any(dm.stats[k] for k in ("no_image", "corrupt_image", "missing_caption"))
    assert dm.data_metrics()["data/excluded"] == 4
    assert dm.summary().endswith("excluded 4 (data.exclude_keys)")
    # without a list: no count, no metric
    plain = datamodule(a, batch_size=6)
    assert "data/excluded" not in plain.data_metrics() and "excluded" not in plain.summary()


def test_a_stream_with_exclusions_resumes_exactly(tmp_path):
    """In-process resume (loader_state -> load_loader_state) with 2 workers and two mixed sources,
    mid-epoch: the excluded samples count as read, so the position stays exact."""
    a, b = source(tmp_path, "a", 4, 30), source(tmp_path, "b", 2, 30)
    shards_a = expand_shards(a)
    listing = _listing(tmp_path, [f"a{i:05d}\t{shards_a[i // 30]}" for i in range(0, 120, 7)] + ["b00011", "b00042"])
    spec = [{"shards": a, "weight": 0.6}, {"shards": b, "weight": 0.4}]
    kw = {"num_workers": 2, "batch_size": 10, "train_num_samples": 120, "exclude_keys": listing}

    full, whole, (state,) = assert_resumes_exactly(spec, kw, stops=(9,))
    assert len(full) == 24 and whole.stats["excluded"] > 0
    excluded = {_caption(f"a{i:05d}") for i in range(0, 120, 7)} | {"b 11", "b 42"}
    assert not excluded & {c for captions, _ in full for c in captions}
    assert state["exclusions"]["entries"] == 20


def test_a_changed_list_continues_at_the_saved_position_with_a_warning(tmp_path):
    a = source(tmp_path, "a", 2, 20)
    dm = datamodule(a, batch_size=10, exclude_keys=_listing(tmp_path, ["a00001"]))
    collect(dm, n=1)
    state = dm.loader_state()
    other = datamodule(a, batch_size=10, exclude_keys=_listing(tmp_path, ["a00001", "a00002"], "other.txt"))
    other.train_dataloader()
    with pytest.warns(UserWarning, match=r"data.exclude_keys changed since the checkpoint \(1 entries of .* -> 2 "):
        other.load_loader_state(state)
    assert other._resume is not None  # resumed where it stood, not at the next epoch
    # the same entries in another file are the same list: no warning
    same = datamodule(a, batch_size=10, exclude_keys=_listing(tmp_path, ["a00001"], "same.txt"))
    same.train_dataloader()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_loader_state(state)


def test_builtin_shards_are_named_portably_and_resolved_back():
    shard = expand_shards("builtin:emoji/google/train-000000.tar")[0]
    assert portable_shard(shard) == "builtin:emoji/google/train-000000.tar"
    assert canonical_shard("builtin:emoji/google/train-000000.tar") == os.path.realpath(shard)
    assert format_entry("1f600", shard) == "1f600\tbuiltin:emoji/google/train-000000.tar"
    assert format_entry("1f600", None) == "1f600"
    # the two styles share keys and shard basenames: an entry of one never matches the other
    ex = Exclusions({(canonical_shard("builtin:emoji/google/train-000000.tar"), "1f600")}, set())
    assert ex.excluded(str(builtin_root() / "emoji/google/train-000000.tar"), "1f600")
    assert not ex.excluded(str(builtin_root() / "emoji/twitter/train-000000.tar"), "1f600")
    assert portable_shard("https://host/x.tar") == "https://host/x.tar"


@pytest.mark.parametrize("content, message", [
    (None, r"^data.exclude_keys .*missing.txt: no such file \(write one with `vlp overlap"),
    ("a00001\tx\ty\n", r"^data.exclude_keys .*: line 1 is not KEY or KEY<TAB>SHARD: 'a00001\\tx\\ty'$"),
    ("# ok\n\ta/000.tar\n", r"^data.exclude_keys .*: line 2 is not KEY or KEY<TAB>SHARD"),
    ("a00001\t/elsewhere/000.tar\n", (r"^data.exclude_keys .*: none of its 1 entries is in a training shard \(it "
                                       r"names 1 shard\(s\), e.g. /elsewhere/000.tar\); was it written for other")),
])
def test_a_bad_exclusion_file_is_a_one_line_error(tmp_path, content, message):
    a = source(tmp_path, "a", 1, 2)
    path = tmp_path / ("missing.txt" if content is None else "bad.txt")
    if content is not None:
        path.write_text(content)
    with pytest.raises(VLPError, match=message) as info:
        datamodule(a, exclude_keys=str(path))
    assert "\n" not in str(info.value)


def test_an_empty_list_excludes_nothing(tmp_path):
    a = source(tmp_path, "a", 1, 20)
    dm = datamodule(a, batch_size=10, exclude_keys=_listing(tmp_path, []))
    assert dm.epoch_batches() == 2 and len(collect(dm)) == 2 and dm.stats["excluded"] == 0


def test_the_cli_takes_an_exclusion_file(tmp_path):
    from tests.conftest import TINY
    from vlp.cli import run_cli

    listing = _listing(tmp_path, [format_entry("1f600", expand_shards("builtin:emoji/google/train-000000.tar")[0])])
    cli = run_cli(["--recipe", "clip_tiny", *TINY, "--trainer.logger", "false", "--data.exclude_keys", listing],
                  run=False)
    assert len(cli.datamodule.exclusions) == 1

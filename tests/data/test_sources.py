"""Mixed training sources (vlp.data.sources): proportions, the epoch, reproducibility, exact
resume, per-source counts, clear errors for bad source specs."""

import re
from collections import Counter

import pytest
import torch

from tests.data.streams import assert_resumes_exactly, collect, datamodule, source
from vlp.errors import VLPError


def _prefixes(batches) -> Counter:
    return Counter(c.split()[0] for b in batches for c in b["caption"])


def test_a_mix_draws_in_proportion_to_the_weights_and_counts_each_source(tmp_path):
    a, b = source(tmp_path, "a", 4, 50), source(tmp_path, "b", 2, 50)
    dm = datamodule([{"shards": a, "weight": 0.8}, {"shards": b, "weight": 0.2}], train_num_samples=1000)
    batches = collect(dm)
    assert len(batches) == 50
    drawn = _prefixes(batches)
    assert abs(drawn["a"] / 1000 - 0.8) < 0.04, drawn  # 3 binomial standard deviations
    # b holds 100 samples and was asked for ~200: it was read in more than one pass
    assert len({c for bt in batches for c in bt["caption"] if c.startswith("b ")}) == 100
    assert dm.stats["source_a"] == drawn["a"] and dm.stats["source_b"] == drawn["b"]
    metrics = dm.data_metrics()
    assert metrics["data/source_a"] == drawn["a"] and metrics["data/source_b"] == drawn["b"]
    assert dm.summary().endswith(f"from sources a {drawn['a']}, b {drawn['b']}")


def test_the_epoch_of_a_mix_is_the_sum_of_size_times_repeat(tmp_path):
    a, b = source(tmp_path, "a", 4, 50), source(tmp_path, "b", 2, 50)
    # without weights the shares follow size x repeat: 200 x 1 and 100 x 2, half and half
    dm = datamodule([a, {"shards": b, "repeat": 2}])
    assert dm.epoch_batches() == 400 // 20 and dm._mix()[0].share == pytest.approx(0.5)
    drawn = _prefixes(collect(dm))
    assert sum(drawn.values()) == 400 and abs(drawn["a"] / 400 - 0.5) < 0.08, drawn
    # with weights the epoch stays sum(size x repeat); `samples` stands in for counting
    dm = datamodule([{"shards": a, "weight": 1, "samples": 1000}, {"shards": b, "weight": 3}])
    assert dm.epoch_batches() == 1100 // 20 and dm._mix()[1].share == pytest.approx(0.75)
    assert datamodule([a, b], train_num_samples=60).epoch_batches() == 3  # the explicit epoch wins


def test_a_mix_follows_the_seed_and_differs_between_epochs(tmp_path):
    a, b = source(tmp_path, "a", 2, 40), source(tmp_path, "b", 2, 40)
    spec = [{"shards": a, "weight": 0.5}, {"shards": b, "weight": 0.5}]

    def epochs(seed, n=2):
        loader = datamodule(spec, seed=seed, train_num_samples=80).train_dataloader()
        return [[c for bt in loader for c in bt["caption"]] for _ in range(n)]

    first, second = epochs(3)
    assert first != second
    torch.manual_seed(5)  # the process RNG plays no part
    assert epochs(3, n=1)[0] == first
    assert epochs(4, n=1)[0] != first


def test_a_list_of_one_source_is_the_plain_stream(tmp_path):
    a = source(tmp_path, "a", 2, 40)
    plain = [c for bt in datamodule(a).train_dataloader() for c in bt["caption"]]
    assert [c for bt in datamodule([a]).train_dataloader() for c in bt["caption"]] == plain
    assert [c for bt in datamodule([{"shards": a, "weight": 2.0}]).train_dataloader() for c in bt["caption"]] == plain


def test_a_mixed_stream_resumes_exactly_with_drawn_captions_and_templates(tmp_path):
    """In-process resume (as a checkpoint does it: loader_state -> load_loader_state), with data
    workers, mid-epoch and at an epoch boundary; captions drawn from a json list and templated."""
    a, b = source(tmp_path, "a", 4, 30), source(tmp_path, "b", 2, 30)
    spec = [{"shards": a, "weight": 0.6, "name": "big"}, {"shards": b, "weight": 0.4}]
    kw = {"num_workers": 2, "batch_size": 10, "train_num_samples": 120, "caption_key": "tags",
          "caption_templates": ["a photo of {}", "{} again"]}

    full, whole, states = assert_resumes_exactly(spec, kw, stops=(5, 12))  # mid-epoch, end of epoch 0
    assert len(full) == 24
    assert all(state["mix"] == [["big", 4, 0.6], ["b", 2, 0.4]] for state in states)
    captions = [c for cs, _ in full for c in cs]
    assert all(re.fullmatch(r"(a photo of [ab] \d+ [xy])|([ab] \d+ [xy] again)", c) for c in captions), captions[:5]


def test_a_checkpoint_of_another_mix_restarts_at_the_next_epoch(tmp_path):
    a, b = source(tmp_path, "a", 2, 20), source(tmp_path, "b", 2, 20)
    dm = datamodule([{"shards": a, "weight": 0.5}, {"shards": b, "weight": 0.5}], batch_size=10, train_num_samples=40)
    collect(dm, n=1)
    state = dm.loader_state()
    other = datamodule([{"shards": a, "weight": 0.9}, {"shards": b, "weight": 0.1}], batch_size=10, train_num_samples=40)
    other.train_dataloader()
    with pytest.warns(UserWarning, match=r"cannot resume exactly: the checkpoint read the sources \[\['a', 2, 0.5\]"):
        other.load_loader_state(state)
    assert other._next_epoch == 1


def test_workers_are_lowered_to_the_source_with_the_fewest_shards(tmp_path):
    a, b = source(tmp_path, "a", 4, 20), source(tmp_path, "b", 1, 20)
    dm = datamodule([a, b], num_workers=2, batch_size=10)
    with pytest.warns(UserWarning, match="data.num_workers 2 lowered to 1: source b: 1 shards give each of 1 ranks 1"):
        assert dm.train_dataloader().num_workers == 1
    dm._world_size = lambda: 2
    with pytest.raises(VLPError, match="^source b: 1 shards cannot feed 2 ranks"):
        dm.train_dataloader()


@pytest.mark.parametrize("spec, message", [
    ([{"shards": "{a}", "weight": 1}, {"shards": "{missing}/*.tar", "weight": 1}],
     r"^data.train_shards\[1\] \(.*/missing/\*\.tar\): shard path '.*/missing/\*\.tar' matches no file$"),
    ([{"shards": "{a}", "weight": -0.5}],
     r"^data.train_shards\[0\] \(.*/a/\*\.tar\): weight must be a number > 0, got -0.5$"),
    ([{"shards": "{a}", "repeat": 0}], r"^data.train_shards\[0\] \(.*\): repeat must be a number > 0, got 0$"),
    ([{"shards": "{a}", "weight": 1}, "{a}"], (r"^give a weight for every source or for none; missing: "
                                               r"data.train_shards\[1\] \(.*/a/\*\.tar\)$")),
    ([{"shards": "{a}", "wieght": 1}], (r"^data.train_shards\[0\]: unknown key\(s\) wieght; a source takes shards, "
                                       r"weight, repeat, samples, name$")),
    ([{"weight": 1}], r"^data.train_shards\[0\]: no 'shards' given"),
    ([{"shards": "{a}", "samples": 0}], r"samples must be an integer >= 1, got 0$"),
    ([{"shards": "{a}", "name": "x"}, {"shards": "{a}", "name": "x"}], r"source names must differ, got \['x', 'x'\]"),
    ([{"shards": "{a}", "name": "a b"}], r"name 'a b' may hold only letters"),
    ([], r"^data.train_shards must be a shard spec or a non-empty list of sources"),
])
def test_a_bad_source_spec_is_a_clear_error_naming_it(tmp_path, spec, message):
    a = source(tmp_path, "a", 1, 2)
    spec = [{k: v.replace("{a}", a).replace("{missing}", str(tmp_path / "missing")) if isinstance(v, str) else v
             for k, v in item.items()} if isinstance(item, dict) else item.replace("{a}", a) for item in spec]
    with pytest.raises(VLPError, match=message):
        datamodule(spec)


def test_the_readme_mix_builds_and_the_cli_takes_sources_and_filters():
    from pathlib import Path

    import yaml

    from tests.conftest import TINY
    from vlp.cli import run_cli

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "train_shards:\n    - {" in b)
    data = yaml.safe_load(block)["data"]
    dm = datamodule(data["train_shards"], batch_size=32)
    assert [p.name for p in dm._mix()] == ["google", "twemoji"] and dm.epoch_batches() == 2 * 1521 // 32
    mix = "[{shards: 'builtin:emoji/google/train-*.tar', weight: 0.7}, 'builtin:emoji/twitter/train-*.tar']"
    with pytest.raises(VLPError, match=r"^give a weight for every source or for none; missing: "
                                       r"data.train_shards\[1\] \(builtin:emoji/twitter/train-\*\.tar\)$"):
        run_cli(["--recipe", "clip_tiny", *TINY, "--data.train_shards", mix, "--trainer.logger", "false"], run=False)
    mix = mix.replace("'builtin:emoji/twitter", "{weight: 0.3, shards: 'builtin:emoji/twitter").replace("]", "}]")
    cli = run_cli(["--recipe", "clip_tiny", *TINY, "--data.train_shards", mix, "--data.filters",
                   "{min_side: 32, require: [x]}", "--data.caption_templates", "['a {} emoji']",
                   "--trainer.logger", "false"], run=False)
    dm = cli.datamodule
    assert [(p.name, p.share) for p in dm._mix()] == [("google", 0.7), ("twitter", 0.3)]
    assert dm.filters.min_side == 32 and dm.filters.require == ["x"] and dm.caption_templates == ["a {} emoji"]


MIX = "[{shards: 'builtin:emoji/google/train-*.tar', weight: 0.7}, {shards: 'builtin:emoji/twitter/train-*.tar', " \
      "weight: 0.3}]"


def _fit(save_dir, *extra):
    import csv

    from tests.conftest import TINY
    from vlp.cli import main

    main(["fit", "--recipe", "clip_tiny", *TINY, "--data.train_shards", MIX, "--data.num_workers", "2",
          "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.save_dir", str(save_dir),
          "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "-1", "--trainer.callbacks",
          "[{class_path: vlp.callbacks.StepCheckpoint, init_args: {every_n_steps: 2, keep: 2}}]", *extra])
    version = max((save_dir / "clip_tiny").glob("version_*"))
    with open(version / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}, rows


@pytest.mark.slow
def test_vlp_fit_logs_and_prints_per_source_counts_and_resumes_a_mix_exactly(tmp_path, capsys):
    expected, rows = _fit(tmp_path / "ref", "--trainer.max_steps", "5")
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("data: "))
    google, twitter = map(int, re.search(r"from sources google (\d+), twitter (\d+)$", line).groups())
    assert google + twitter == 40 and "data: 40 samples read" in line
    assert float(next(r for r in rows if r.get("data/source_google"))["data/source_google"]) > 0
    _fit(tmp_path / "run", "--trainer.max_steps", "2")
    resumed, _ = _fit(tmp_path / "run", "--trainer.max_steps", "5", "--ckpt_path", "last")
    assert sorted(resumed) == [2, 3, 4] and all(resumed[s] == expected[s] for s in resumed), (resumed, expected)

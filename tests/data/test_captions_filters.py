"""Caption choice per sample (a member, a json path, a list-valued field, several fields,
templates) and the metadata filters applied while reading (vlp.data.filters)."""

import io
import json
import re

import pytest
from PIL import Image

from vlp.data.datamodule import VLPDataModule
from vlp.data.shard_writer import write_shard
from vlp.errors import VLPError


def _png(size=(20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _sample(key, txt=None, info=None, size=(20, 20), png=None):
    fields = {"png": png if png is not None else _png(size)}
    if txt is not None:
        fields["txt"] = txt.encode()
    if info is not None:
        fields["json"] = json.dumps(info).encode()
    return key, fields


def _dm(path, n, **kw):
    return VLPDataModule(train_shards=str(path), batch_size=n, num_workers=0, image_size=16, context_length=8,
                         shuffle_buffer=1, train_num_samples=n, seed=0, **kw)


def _captions(dm, epochs=1):
    loader = dm.train_dataloader()
    return [c for _ in range(epochs) for b in loader for c in dm.on_before_batch_transfer(b, 0)["caption"]]


def _tagged(tmp_path, n=10):
    write_shard(tmp_path / "t.tar", [_sample(f"s{i:03d}", f"txt {i}", {"tags": [f"{i} x", f"{i} y", f"{i} z", 7],
                                                                        "labels": {"de": f"de {i}"}})
                                     for i in range(n)])
    return tmp_path / "t.tar"


def test_a_caption_is_drawn_from_a_list_valued_json_field_per_sample_and_epoch(tmp_path):
    path = _tagged(tmp_path)
    first = _captions(_dm(path, 10, caption_key="tags"), epochs=3)
    assert first == _captions(_dm(path, 10, caption_key="tags"), epochs=3)  # reproducible
    assert all(re.fullmatch(r"\d+ [xyz]", c) for c in first), first  # strings only (7 is not one)
    by_sample = {}
    for c in first:
        by_sample.setdefault(c.split()[0], set()).add(c)
    assert len(by_sample) == 10 and any(len(v) > 1 for v in by_sample.values())  # drawn anew per epoch
    assert sorted(_captions(_dm(path, 10, caption_key="labels.de"))) == sorted(f"de {i}" for i in range(10))


def test_caption_keys_mix_members_json_paths_and_lists(tmp_path):
    path = _tagged(tmp_path, 40)
    got = _captions(_dm(path, 40, caption_keys=["txt", "labels.de", "tags"]))
    kinds = {"txt" if c.startswith("txt") else "de" if c.startswith("de") else "tag" for c in got}
    assert kinds == {"txt", "de", "tag"}


def test_caption_templates_are_drawn_per_sample(tmp_path):
    path = _tagged(tmp_path, 20)
    templates = ["a {} emoji", "an emoji of {}"]
    got = _captions(_dm(path, 20, caption_templates=templates))
    assert got == _captions(_dm(path, 20, caption_templates=templates))
    assert {c.split(" txt")[0] for c in got} == {"a", "an emoji of"}
    assert all(re.fullmatch(r"(a txt \d+ emoji)|(an emoji of txt \d+)", c) for c in got)
    assert _captions(_dm(path, 20, caption_templates=["{}!"]))[0].endswith("!")
    for bad in (["no placeholder"], []):
        with pytest.raises(VLPError, match=r"data.caption_templates: give templates with '\{\}'"):
            _dm(path, 20, caption_templates=bad)


def test_every_filter_drops_and_counts_its_samples(tmp_path):
    ok = {"is_safe": True}
    samples = [
        _sample("f01", "small from json", {**ok, "width": 10, "height": 10}, png=b"not even an image"),
        _sample("f02", "small from header", ok, size=(10, 30)),
        _sample("f03", "too wide", ok, size=(130, 40)),
        _sample("f04", "x", ok),                                    # short caption
        _sample("f05", "a caption far longer than forty characters, surely", ok),
        _sample("f06", "unsafe", {"is_safe": False}),
        _sample("f07", "safety unknown", {}),
        _sample("f08", "safety as text", {"is_safe": "true"}),
        _sample("f09", "json beats header", {**ok, "width": 64, "height": 64}, size=(10, 10)),
    ] + [_sample(f"g{i:02d}", f"good {i}", ok) for i in range(6)]
    write_shard(tmp_path / "f.tar", samples)
    filters = {"min_side": 16, "max_aspect": 3.0, "min_caption_chars": 2, "max_caption_chars": 40,
               "require": ["is_safe"]}
    dm = _dm(tmp_path / "f.tar", 7, filters=filters, max_bad_fraction=0.0)
    got = _captions(dm)
    assert sorted(got) == sorted(["json beats header"] + [f"good {i}" for i in range(6)])
    expected = {"filter_small_image": 2, "filter_aspect_ratio": 1, "filter_short_caption": 1,
                "filter_long_caption": 1, "filter_require_is_safe": 3}
    assert {k: dm.stats[k] for k in expected} == expected and dm.stats["seen"] == 15
    metrics = dm.data_metrics()
    assert metrics["data/filtered"] == 8 and metrics["data/skipped"] == 0  # not bad data: no max_bad_fraction stop
    assert metrics["data/filtered_small_image"] == 2 and metrics["data/filtered_require_is_safe"] == 3
    assert ("15 samples read; skipped 0; filtered 8 (small_image 2, aspect_ratio 1, short_caption 1, long_caption 1, "
            "require_is_safe 3)") in dm.summary()


@pytest.mark.parametrize("filters, message", [
    ({"min_sid": 3}, r"data.filters: unknown rule\(s\) min_sid; the rules are min_side, max_aspect"),
    ({"max_aspect": 0.5}, r"data.filters.max_aspect must be a number >= 1 \(longer side / shorter\), got 0.5"),
    ({"min_side": "big"}, r"data.filters.min_side must be an integer >= 0, got 'big'"),
    ({"min_caption_chars": 5, "max_caption_chars": 2}, r"min_caption_chars 5 > max_caption_chars 2"),
])
def test_a_bad_filter_is_a_clear_error(tmp_path, filters, message):
    path = _tagged(tmp_path, 2)
    with pytest.raises(VLPError, match=message):
        _dm(path, 2, filters=filters)


def test_the_plain_stream_never_parses_the_json(tmp_path, monkeypatch):
    """The hot path: without a filter or caption that needs it, no sample's json is parsed."""
    import vlp.data.fields
    import vlp.data.filters

    def refuse(sample):
        raise AssertionError("json parsed")

    path = _tagged(tmp_path, 8)
    monkeypatch.setattr(vlp.data.fields, "sample_json", refuse)
    monkeypatch.setattr(vlp.data.filters, "sample_json", refuse)
    assert len(_captions(_dm(path, 8))) == 8
    assert len(_captions(_dm(path, 8, filters={"min_caption_chars": 1}, caption_templates=["{} !"]))) == 8

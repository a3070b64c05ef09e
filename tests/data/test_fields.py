"""Batch fields as parts (vlp.data.fields): declared by the recipe, decoded and collated by the
training stream and the eval streams alike; ragged boxes with a mask; a field the data lacks is a
one-line error naming the field and the sample's key (or skipped and counted, when asked)."""

import io
import json

import pytest
import torch
from PIL import Image as PILImage

from vlp.data.datamodule import VLPDataModule
from vlp.data.fields import Boxes, Caption, FieldEnv, Label, SampleContext, Tags, Views
from vlp.data.shard_writer import write_shard
from vlp.errors import VLPError

CLASSES = ["animal", "food", "plant"]


def _png(width=20, height=10, colour=(200, 30, 30)):
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path, n=8, drop_label_at=None):
    samples = []
    for i in range(n):
        info = {"category": CLASSES[i % 3], "labels": {"en": f"thing {i}", "zh": f"东西 {i}"},
                "tags": ["red", "round"] if i % 2 else ["green", "odd"],
                "objects": [{"bbox": [2, 1, 4 + i, 5], "category": CLASSES[j % 3]} for j in range(1 + i % 3)]}
        if i == drop_label_at:
            del info["category"]
        samples.append((f"{i:05d}", {"png": _png(), "txt": f"caption {i}".encode(), "json": json.dumps(info).encode()}))
    write_shard(path, samples)
    return str(path)


def _batch(shard, **kw):
    dm = VLPDataModule(train_shards=shard, batch_size=4, num_workers=0, image_size=16, context_length=8, seed=0,
                       shuffle_buffer=1, **kw)
    batch = next(iter(dm.train_dataloader()))
    state = batch.pop("_state")
    return dm, batch, state


def test_declared_fields_reach_the_batch_and_the_example(tmp_path):
    shard = _shard(tmp_path / "a.tar")
    fields = {"label": Label("category", classes=CLASSES), "tags": Tags("tags", ["red", "green", "round"]),
              "text_zh": Caption("labels.zh"), "boxes": Boxes(classes=CLASSES)}
    dm, batch, state = _batch(shard, fields=fields)
    assert dm.batch_fields() == {"image", "text", "caption", "label", "tags", "text_zh", "boxes", "boxes_mask",
                                 "boxes_labels"}
    assert set(batch) == dm.batch_fields()
    keys = [int(c.split()[1]) for c in batch["caption"]]
    assert batch["label"].tolist() == [k % 3 for k in keys]
    assert batch["tags"].tolist() == [[1, 0, 1] if k % 2 else [0, 1, 0] for k in keys]
    assert state["counts"]["tags_outside_classes"] == sum(k % 2 == 0 for k in keys)  # "odd" of each even sample
    assert batch["text_zh"].shape == batch["text"].shape and not torch.equal(batch["text_zh"], batch["text"])
    # ragged boxes: padded to the batch's most, with a mask; (x0, y0, x1, y1) over the 20 x 10 image
    counts = [1 + k % 3 for k in keys]
    assert batch["boxes"].shape == (4, max(counts), 4)
    assert batch["boxes_mask"].sum(1).tolist() == counts
    first = keys[0]
    assert torch.allclose(batch["boxes"][0, 0], torch.tensor([2 / 20, 1 / 10, (6 + first) / 20, 6 / 10]))
    assert (batch["boxes_labels"][~batch["boxes_mask"]] == -1).all()
    example = dm.example_batch()
    assert set(example) == dm.batch_fields()
    assert all((v.shape[0] if torch.is_tensor(v) else len(v)) == 1 for v in example.values())


def test_a_recipe_without_captions_has_none(tmp_path):
    """A classification (or detection) recipe: ``text: null`` drops the caption field."""
    shard = _shard(tmp_path / "a.tar")
    dm, batch, _ = _batch(shard, fields={"text": None, "label": Label("category", classes=CLASSES)})
    assert set(batch) == {"image", "label"} == dm.batch_fields()


def test_a_field_the_data_lacks_is_one_line_naming_the_field_and_the_sample(tmp_path):
    shard = _shard(tmp_path / "a.tar", drop_label_at=2)
    with pytest.raises(VLPError, match=r"^data field label: sample 00002 in \S+a\.tar: field 'category' not found$"):
        _batch(shard, fields={"label": Label("category")}, max_bad_fraction=1.0)
    _, batch, state = _batch(shard, fields={"label": Label("category", missing="skip")}, max_bad_fraction=1.0)
    assert state["counts"]["missing_field"] == 1 and "caption 2" not in batch["caption"]
    with pytest.raises(VLPError, match=r"sample 00001 in \S+: label 'food' is not among its 1 classes"):
        _batch(shard, fields={"label": Label("category", classes=["animal"])})


def test_an_objective_reading_an_undeclared_field_is_refused_before_training(tmp_path, tiny_module):
    from vlp.fit_checks import check_batch_fields
    from vlp.module import VLPModule
    from vlp.objectives import SimCLRLoss

    module = VLPModule(dict(tiny_module.towers), [SimCLRLoss(mlp_dim=8, out_dim=4)], share={"views": "image"})
    dm = VLPDataModule(train_shards=_shard(tmp_path / "a.tar"), batch_size=4, num_workers=0, image_size=16)
    with pytest.raises(VLPError, match=r"objective simclr reads batch fields \['views'\]"):
        check_batch_fields(module, dm)
    check_batch_fields(module, VLPDataModule(train_shards=str(tmp_path / "a.tar"), batch_size=4, num_workers=0,
                                             image_size=16, fields={"views": Views()}))


def test_eval_parts_read_every_caption_and_labels_as_training_does(tmp_path):
    from vlp.data.eval_set import EvalStream
    from vlp.data.tokenizer import TextTokenizer

    shard = _shard(tmp_path / "a.tar", n=3)
    batch = next(iter(EvalStream([shard], lambda im: torch.zeros(1), TextTokenizer(context_length=8), 3,
                                 captions=["txt", "labels.en"], label_field="category")))
    assert batch["text_owner"].tolist() == [0, 0, 1, 1, 2, 2] and batch["label"] == CLASSES
    sample = {"__key__": "k", "__url__": "u", "json": json.dumps({"objects": [{"bbox": [0, 0, 1]}]}).encode(),
              "png": _png()}
    with pytest.raises(VLPError, match=r"data field boxes: sample k in u: a box is not \{bbox: \[x, y, w, h\]"):
        Boxes().bound("boxes", FieldEnv(16)).decode(SampleContext(sample))

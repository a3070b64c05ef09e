"""The eval stream (vlp.data.eval_set.EvalStream): ranks read equal shares of a set without
overlap (padding rows marked -1), data workers split a rank's share by batch in order, images
decode as in training, a missing caption field is a clear error."""

import pytest
import torch

from tests.eval.shards import eval_shard
from vlp.data.eval_set import EvalStream
from vlp.data.shard_writer import write_shard
from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError


def test_eval_stream_splits_samples_between_readers_without_overlap(tmp_path):
    shards = [eval_shard(tmp_path / "a.tar", 7), eval_shard(tmp_path / "b.tar", 6)]
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

    shard = eval_shard(tmp_path / "a.tar", 13)
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
    shard = eval_shard(tmp_path / "a.tar", 3, captions=False)
    stream = EvalStream([shard], lambda im: torch.zeros(1), TextTokenizer(context_length=8), 2, captions=["txt"])
    with pytest.raises(VLPError, match="field 'txt' not found"):
        list(stream)

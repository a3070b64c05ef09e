"""Bad samples are skipped and counted or converted and counted, as documented in
vlp.data.stream.SampleDecoder; unreadable shards are named; too much bad data stops the run."""

import io
import struct
import zlib

import pytest
import torch
from PIL import Image

from vlp.data.datamodule import VLPDataModule
from vlp.data.shard_writer import write_shard
from vlp.errors import VLPError


def _img(mode="RGB", size=(20, 20), fmt="PNG", color=None) -> bytes:
    buf = io.BytesIO()
    im = Image.new(mode, size, color if color is not None else (10, 200, 30) if mode == "RGB" else 0)
    im.save(buf, format=fmt)
    return buf.getvalue()


def _bomb_png(width=60000, height=60000) -> bytes:
    """A PNG whose header claims width x height pixels (3.6 G) while holding almost nothing."""
    png = bytearray(_img("L", (1, 1)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(png)


def _rgba_transparent() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _good(i):
    return (f"g{i:04d}", {"png": _img(color=(i % 255, 100, 100)), "txt": f"good {i}".encode()})


def _bad_samples():
    png = _img()
    return [
        ("b0001", {"png": b"\x89PNG this is not an image", "txt": b"corrupt"}),
        ("b0002", {"png": png[: len(png) // 2], "txt": b"truncated image"}),
        ("b0003", {"png": png}),                                       # no caption
        ("b0004", {"png": png, "txt": b"   "}),                         # blank caption
        ("b0005", {"png": png, "txt": b"caf\xe9 latin-1"}),             # not UTF-8
        ("b0006", {"png": _bomb_png(), "txt": b"bomb"}),
        ("b0007", {"txt": b"caption without image"}),
        ("c0001", {"jpg": _img("CMYK", fmt="JPEG", color=(0, 0, 0, 0)), "txt": b"cmyk"}),
        ("c0002", {"png": _img("P"), "txt": b"palette"}),
        ("c0003", {"png": _rgba_transparent(), "txt": b"transparent"}),
    ]


def _collect(dm: VLPDataModule):
    """Iterate an epoch as Lightning does: every batch goes through on_before_batch_transfer."""
    return [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]


def test_each_kind_of_bad_sample_is_skipped_or_converted_and_counted(tmp_path, capsys):
    samples = _bad_samples() + [_good(i) for i in range(22)]
    write_shard(tmp_path / "mixed-000.tar", samples)
    dm = VLPDataModule(train_shards=str(tmp_path / "mixed-000.tar"), batch_size=25, num_workers=0,
                       image_size=16, shuffle_buffer=1, train_num_samples=25, seed=0)
    batches = _collect(dm)
    assert len(batches) == 1 and "_state" not in batches[0]
    captions = batches[0]["caption"]
    assert sorted(captions) == sorted(["cmyk", "palette", "transparent"] + [f"good {i}" for i in range(22)])
    assert dm.stats["corrupt_image"] == 2 and dm.stats["missing_caption"] == 1
    assert dm.stats["empty_caption"] == 1 and dm.stats["caption_not_utf8"] == 1
    assert dm.stats["too_many_pixels"] == 1 and dm.stats["no_image"] == 1
    assert dm.stats["mode_to_rgb"] == 2 and dm.stats["alpha_on_white"] == 1
    assert dm.stats["seen"] == 32
    m = dm.data_metrics()
    assert m["data/skipped"] == 7 and m["data/skipped_corrupt_image"] == 2 and m["data/converted_mode_to_rgb"] == 2
    assert "32 samples read; skipped 7 (no_image 1, corrupt_image 2" in dm.summary()
    # the transparent image was composited on white: after CLIP normalisation white is the max value
    transparent = batches[0]["image"][captions.index("transparent")]
    assert torch.allclose(transparent, transparent.amax(dim=(1, 2), keepdim=True))
    assert transparent[0, 0, 0] > 1.5  # white, not black


def test_truncated_and_missing_shards_are_named_and_skipped(tmp_path, capsys):
    write_shard(tmp_path / "s-000.tar", [_good(i) for i in range(16)])
    write_shard(tmp_path / "s-001.tar", [_good(i) for i in range(16, 32)])
    write_shard(tmp_path / "s-002.tar", [_good(i) for i in range(32, 48)])
    data = (tmp_path / "s-001.tar").read_bytes()
    (tmp_path / "s-001.tar").write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    dm = VLPDataModule(train_shards=str(tmp_path / "s-{000..003}.tar").replace("003", "002"), batch_size=8,
                       num_workers=0, image_size=16, shuffle_buffer=1, seed=0, train_num_samples=32)
    (tmp_path / "s-002.tar").unlink()  # vanished after the run started
    batches = _collect(dm)
    assert len(batches) == 4
    err = capsys.readouterr().err
    assert "vlp: skipped unreadable shard" in err and "s-001.tar" in err and "s-002.tar" in err
    assert dm.stats["unreadable_shard"] >= 2
    assert "unreadable shards" in dm.summary()


def test_too_many_bad_samples_stop_with_a_clear_message(tmp_path):
    bad = [(f"x{i:04d}", {"png": b"garbage", "txt": b"bad"}) for i in range(30)]
    write_shard(tmp_path / "bad-000.tar", [_good(i) for i in range(100)] + bad)
    dm = VLPDataModule(train_shards=str(tmp_path / "bad-000.tar"), batch_size=10, num_workers=0, image_size=16,
                       shuffle_buffer=200, seed=0, train_num_samples=100, max_bad_fraction=0.1)
    with pytest.raises(VLPError, match=r"samples read were bad \(\d+\.\d% > data.max_bad_fraction 10%\): "
                                       r"corrupt_image \d+"):
        _collect(dm)
    # within the limit the same data trains
    dm = VLPDataModule(train_shards=str(tmp_path / "bad-000.tar"), batch_size=10, num_workers=0, image_size=16,
                       shuffle_buffer=200, seed=0, train_num_samples=100, max_bad_fraction=0.3)
    assert len(_collect(dm)) == 10 and dm.stats["corrupt_image"] > 0


def test_a_worker_whose_shards_hold_nothing_usable_fails_instead_of_spinning(tmp_path):
    write_shard(tmp_path / "empty-000.tar", [(f"x{i}", {"png": b"garbage", "txt": b"bad"}) for i in range(5)])
    dm = VLPDataModule(train_shards=str(tmp_path / "empty-000.tar"), batch_size=2, num_workers=0, image_size=16,
                       seed=0, train_num_samples=4, max_bad_fraction=1.0)
    with pytest.raises(VLPError, match="without one usable sample"):
        _collect(dm)


@pytest.mark.parametrize("cut", ["header_boundary", "inside_member"])
def test_tar_reader_detects_truncation_that_tarfile_ignores(tmp_path, cut):
    import tarfile

    from vlp.data.tar_reader import ShardError, tar_samples

    path = tmp_path / "s.tar"
    write_shard(path, [_good(i) for i in range(6)])
    assert len(list(tar_samples(str(path)))) == 6
    with tarfile.open(path) as tar:
        member = tar.getmembers()[6]  # the first member of the 4th sample
    data = path.read_bytes()
    end = member.offset if cut == "header_boundary" else member.offset_data + 10
    path.write_bytes(data[:end])
    if cut == "header_boundary":
        with tarfile.open(path) as tar:  # what Python's tarfile makes of it: a shorter, valid-looking archive
            assert len(tar.getmembers()) == 6
    got = []
    with pytest.raises(ShardError, match="s.tar: (ends without the tar end-of-archive|member g0003.png (truncated|unreadable))"):
        for sample in tar_samples(str(path)):
            got.append(sample["__key__"])
    assert got == ["g0000", "g0001", "g0002"]

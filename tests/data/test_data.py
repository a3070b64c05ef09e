import io
import re
import tarfile

import pytest
import torch

from vlp.data.fields import Views
from PIL import Image

from vlp.data.datamodule import VLPDataModule
from vlp.data.shard_writer import write_shard
from vlp.data.shards import count_samples, expand_shards
from vlp.errors import VLPError


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def _write(path, n, start=0):
    write_shard(path, [(f"{start + i:05d}", {"png": _png((i, 0, 0)), "txt": f"sample {start + i}".encode()})
                       for i in range(n)])


def test_builtin_emoji_shards_are_packaged_with_licences():
    from vlp.data.shards import builtin_root

    assert len(expand_shards("builtin:emoji/google/train-*.tar")) == 8
    assert sum(count_samples(s) for s in expand_shards("builtin:emoji/google/train-*.tar")) == 1521
    assert sum(count_samples(s) for s in expand_shards("builtin:emoji/twitter/test-*.tar")) == 385
    notice = (builtin_root() / "emoji" / "README.md").read_text()
    assert "Apache License 2.0" in notice and "CC-BY 4.0" in notice and "MIT" in notice


def test_shard_spec_forms(tmp_path):
    for i in range(3):
        _write(tmp_path / f"s-{i:03d}.tar", 2, 2 * i)
    by_brace = expand_shards(str(tmp_path / "s-{000..002}.tar"))
    by_glob = expand_shards(str(tmp_path / "s-*.tar"))
    joined = expand_shards(f"{tmp_path}/s-000.tar::{tmp_path}/s-002.tar")
    assert by_brace == by_glob and len(by_brace) == 3 and len(joined) == 2


def test_shard_pattern_matching_nothing_names_it(tmp_path):
    with pytest.raises(VLPError, match=r"shard path '.*missing-\*\.tar' matches no file"):
        expand_shards(str(tmp_path / "missing-*.tar"))
    with pytest.raises(VLPError, match="matches no file"):
        VLPDataModule(train_shards=str(tmp_path / "none-{000..009}.tar"))


def test_train_batches_cover_every_sample_once_per_epoch(tmp_path):
    for i in range(4):
        _write(tmp_path / f"s-{i:03d}.tar", 8, 8 * i)
    dm = VLPDataModule(train_shards=str(tmp_path / "s-*.tar"), batch_size=4, num_workers=2, image_size=16,
                       context_length=8)
    loader = dm.train_dataloader()
    assert len(loader) == 8
    batches = list(loader)
    assert len(batches) == 8
    captions = [c for b in batches for c in b["caption"]]
    assert sorted(captions) == sorted(f"sample {i}" for i in range(32))
    b = batches[0]
    assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.float32
    assert b["text"].shape == (4, 8) and b["text"].dtype == torch.long


def test_training_order_differs_between_epochs_and_follows_the_seed(tmp_path):
    for i in range(2):
        _write(tmp_path / f"s-{i:03d}.tar", 16, 16 * i)

    def epochs(seed, workers=0, n=2):
        dm = VLPDataModule(train_shards=str(tmp_path / "s-*.tar"), batch_size=8, num_workers=workers,
                           image_size=16, shuffle_buffer=32, seed=seed)
        loader = dm.train_dataloader()
        out = []
        for _ in range(n):
            batches = list(loader)
            out.append(([c for b in batches for c in b["caption"]], torch.cat([b["image"] for b in batches])))
        return out

    (first, img1), (second, _) = epochs(3)
    assert first != second and sorted(first) == sorted(second)
    again = epochs(3)
    assert again[0][0] == first and torch.equal(again[0][1], img1)  # the augmentation follows the seed too
    assert epochs(4)[0][0] != first
    torch.manual_seed(123)  # the process RNG plays no part
    assert epochs(3, n=1)[0][0] == first


def test_workers_are_lowered_to_the_shards_of_a_rank_and_the_loader_state_records_them(tmp_path):
    _write(tmp_path / "only.tar", 8)
    dm = VLPDataModule(train_shards=str(tmp_path / "only.tar"), batch_size=4, num_workers=2, image_size=16, seed=0)
    with pytest.warns(UserWarning, match="data.num_workers 2 lowered to 1: 1 shards give each of 1 ranks 1"):
        loader = dm.train_dataloader()
    assert loader.num_workers == 1 and len(loader) == 2
    first = dm.on_before_batch_transfer(next(iter(loader)), 0)
    state = dm.loader_state()
    assert state["workers"] == 1
    # a run with the same settings resumes the stream exactly (the same effective count)
    again = VLPDataModule(train_shards=str(tmp_path / "only.tar"), batch_size=4, num_workers=2, image_size=16)
    with pytest.warns(UserWarning, match="lowered to 1"):
        resumed = again.train_dataloader()
    again.load_loader_state(state)
    rest = [again.on_before_batch_transfer(b, 0)["caption"] for b in resumed]
    assert sorted(first["caption"] + rest[0]) == [f"sample {i}" for i in range(8)] and len(rest) == 1
    # 0 workers stay 0; more shards than workers keep the workers
    assert VLPDataModule(train_shards=str(tmp_path / "only.tar"), batch_size=4, num_workers=0).train_dataloader() \
        .num_workers == 0
    for i in range(3):
        _write(tmp_path / f"s-{i}.tar", 8)
    assert VLPDataModule(train_shards=str(tmp_path / "s-*.tar"), batch_size=4, num_workers=2).train_dataloader() \
        .num_workers == 2


def test_fewer_shards_than_ranks_is_a_clear_error(tmp_path):
    _write(tmp_path / "only.tar", 8)
    dm = VLPDataModule(train_shards=str(tmp_path / "only.tar"), batch_size=4, num_workers=0)
    dm._world_size = lambda: 2
    with pytest.raises(VLPError, match="1 shards cannot feed 2 ranks: write at least one shard per rank"):
        dm.train_dataloader()


def test_a_local_shard_that_is_not_a_tar_file_is_named(tmp_path):
    (tmp_path / "x.tar").write_text("not a tar archive\n")
    with pytest.raises(VLPError, match=rf"^shard {re.escape(str(tmp_path))}/x\.tar is not a tar file \(no tar header "
                                       r"at its start\)$"):
        VLPDataModule(train_shards=str(tmp_path / "x.tar"))
    (tmp_path / "x.tar").write_bytes(b"")
    with pytest.raises(VLPError, match="is not a tar file \\(an empty file\\)"):
        expand_shards(str(tmp_path / "*.tar"))
    with tarfile.open(tmp_path / "x.tar", "w:gz"):
        pass
    with pytest.raises(VLPError, match="is not a tar file \\(gzip-compressed; give plain .tar shards\\)"):
        expand_shards(str(tmp_path / "x.tar"))
    with tarfile.open(tmp_path / "x.tar", "w"):  # an archive without members is a tar file
        pass
    assert expand_shards(str(tmp_path / "x.tar")) == [str(tmp_path / "x.tar")]


def test_reshard_keeps_every_member(tmp_path):
    from vlp.data.shard_writer import reshard

    _write(tmp_path / "src.tar", 10)
    counts = reshard([tmp_path / "src.tar"], str(tmp_path / "out-%03d.tar"), 3)
    assert counts == [3, 3, 4]
    with tarfile.open(tmp_path / "out-002.tar") as tar:
        assert tar.getnames()[:2] == ["00006.png", "00006.txt"]


def test_every_reader_takes_the_sample_key_by_one_rule(tmp_path):
    """webdataset's rule (the member name up to the first dot of its basename) in the tar reader,
    the eval stream, the shard writer's reader and the sample count alike: a dotted folder and
    ``./`` prefixes do not merge samples, a dotted field stays one field."""
    from vlp.data.eval_set import EvalStream
    from vlp.data.shard_writer import read_samples
    from vlp.data.tar_reader import split_key, tar_samples
    from vlp.data.tokenizer import TextTokenizer

    png = _png((1, 2, 3))
    members = [("./v1.2/000.png", png), ("./v1.2/000.seg.PNG", b"x"), ("./v1.2/000.txt", b"a"),
               ("./v1.2/001.png", png), ("./v1.2/001.txt", b"b"), ("./v1.3/000.png", png),
               ("./v1.3/000.txt", b"c"), ("README", b"not a sample")]
    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert split_key("./v1.2/000.seg.PNG") == ("./v1.2/000", "seg.png") and split_key("README") is None
    keys = ["./v1.2/000", "./v1.2/001", "./v1.3/000"]
    assert [s["__key__"] for s in tar_samples(str(tmp_path / "a.tar"))] == keys
    assert [(k, sorted(f)) for k, f in read_samples([tmp_path / "a.tar"])] == [
        (keys[0], ["png", "seg.png", "txt"]), (keys[1], ["png", "txt"]), (keys[2], ["png", "txt"])]
    assert count_samples(str(tmp_path / "a.tar")) == 3
    stream = EvalStream([str(tmp_path / "a.tar")], lambda im: torch.zeros(1), TextTokenizer(context_length=8), 8,
                        label_field="txt")
    assert [b["label"] for b in stream] == [["a", "b", "c"]]


def test_data_never_imports_eval():
    import ast
    from pathlib import Path

    import vlp.data

    for path in Path(vlp.data.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "vlp.eval" or n.startswith("vlp.eval.") for n in names), path.name


def test_every_entry_of_a_training_batch_has_the_batch_dimension_first():
    """What the gradient cache's chunking and the strategies' batch splitting rely on: each
    field's collated entries (tensors and lists) lead with the batch size."""
    dm = VLPDataModule(batch_size=5, num_workers=0, image_size=32, context_length=16, seed=0, train_num_samples=10,
                       fields={"views": Views()})
    batch = next(iter(dm.train_dataloader()))
    batch.pop("_state")
    assert set(batch) == {"image", "text", "caption", "views"}
    sizes = {k: (v.shape[0] if torch.is_tensor(v) else len(v)) for k, v in batch.items()}
    assert set(sizes.values()) == {5}, sizes
    assert batch["views"].shape == (5, 2, 3, 32, 32)


def test_a_process_with_a_suspended_training_loader_exits(tmp_path):
    """multiprocessing terminates (SIGTERM) and joins daemonic workers at exit: the training
    loader's workers must end on SIGTERM (they ignore only Ctrl-C), or the exit hangs."""
    import subprocess
    import sys

    script = ("from vlp.data.datamodule import VLPDataModule\n"
              "dm = VLPDataModule(batch_size=8, num_workers=2, image_size=32, context_length=16, seed=0)\n"
              "it = iter(dm.train_dataloader()); next(it)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]

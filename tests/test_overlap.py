"""`vlp overlap` (vlp.overlap): planted near-duplicates (resized, JPEG re-encoded, slightly cropped
copies of real emoji) among different emoji are all found by the perceptual hash and nothing
else is; the exclusion list it writes names exactly the matched training samples (by shard and
key) and the training stream skips exactly those; the command's report and its one-line errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.test_cli import _error_line
from vlp.cli import main
from vlp.data.datamodule import VLPDataModule
from vlp.data.decode import decode_image, image_member
from vlp.data.exclusions import Exclusions
from vlp.data.shard_writer import write_shard
from vlp.data.shards import expand_shards
from vlp.data.tar_reader import tar_samples
from vlp.overlap import (
    PHASH_THRESHOLD,
    overlap,
    phash,
    phash_arrays,
    phash_matches,
    scan,
)
from vlp.search import popcount

N_TRAIN, N_PLANTED, N_OTHER = 20, 12, 8
# Among the 8 different emoji drawn, one is a look-alike that a 64-bit grey pHash cannot tell from a
# copy: Micronesia's flag (blue field, white stars) against the EU's (blue field, a ring of yellow
# stars) in the training picks, 8 bits apart, as far as a JPEG copy can be. It is matched and named
# here rather than drawn around; the other 7 are 18 bits or more from every training image.
LOOKALIKE = ("1f1eb-1f1f2", "1f1ea-1f1fa")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: int = 70) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _copy(image: Image.Image, i: int) -> tuple[str, bytes]:
    """The i-th planted copy: resized (down, up), JPEG q=70, or cropped by 1 px a side (3% of 64 px)."""
    kind = i % 4
    if kind == 0:
        return "png", _png(image.resize((48, 48), Image.Resampling.BICUBIC))
    if kind == 1:
        return "png", _png(image.resize((100, 100), Image.Resampling.BICUBIC))
    if kind == 2:
        return "jpg", _jpeg(image)
    w, h = image.size
    return "png", _png(image.crop((1, 1, w - 1, h - 1)))


def _spread(spec: str, n: int) -> list[dict]:
    """``n`` samples spread evenly over the shards of ``spec`` (every category, not only faces)."""
    samples = [s for url in expand_shards(spec) for s in tar_samples(url)]
    step = len(samples) // n
    return samples[::step][:n]


def _fields(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if not k.startswith("__")}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Training shards ``a/train-000000.tar`` (20 real google emoji) and ``b/train-000000.tar`` (the
    same keys and basename, other images: keys are not unique across shards); an eval shard of 12
    planted copies of the first 12 training images (under other keys) and 8 google test emoji."""
    root = tmp_path_factory.mktemp("planted")
    train = _spread("builtin:emoji/google/train-*.tar", N_TRAIN)
    a, b = root / "a" / "train-000000.tar", root / "b" / "train-000000.tar"
    write_shard(a, [(s["__key__"], _fields(s)) for s in train])
    # b: the keys of a, seeded noise images (like nothing in the eval shard)
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in train]
    write_shard(b, [(s["__key__"], {"png": _png(im), "txt": f"b {s['__key__']}".encode()})
                    for s, im in zip(train, noise)])
    planted_rows, expected = [], {}
    for i, s in enumerate(train[:N_PLANTED]):
        ext, data = _copy(decode_image(s["png"]), i)
        key = f"copy{i:02d}"
        planted_rows.append((key, {ext: data, "txt": b"planted"}))
        expected[key] = s["__key__"]
    different = _spread("builtin:emoji/google/test-*.tar", N_OTHER + 3)[-N_OTHER:]
    rows = planted_rows + [(s["__key__"], _fields(s)) for s in different]
    ev = root / "eval" / "eval-000000.tar"
    write_shard(ev, rows)
    return {"root": root, "a": str(a), "b": str(b), "eval": str(ev), "expected": expected,
            "train_keys": [s["__key__"] for s in train], "captions": [s["txt"].decode() for s in train]}


def test_phash_is_the_dct_hash():
    # the definition written out: unnormalised DCT-II coefficient (u, v) of the 32x32 grey image
    # (scipy's: 2 sum cos per axis), u, v < 8, one bit each (row-major, the first the highest):
    # above the median of the 64
    grey = np.random.default_rng(0).random((32, 32)) * 255
    n, x = 32, np.arange(32)
    coeff = np.array([[4 * (grey * np.outer(np.cos(np.pi * (2 * x + 1) * u / (2 * n)),
                                            np.cos(np.pi * (2 * x + 1) * v / (2 * n)))).sum()
                       for v in range(8)] for u in range(8)]).ravel()
    bits = "".join("1" if c > np.median(coeff) else "0" for c in coeff)
    h = phash_arrays(grey[None])
    assert h.dtype == np.uint64 and f"{int(h[0]):064b}" == bits and popcount(h)[0] == 32
    assert f"{int(h[0]):016x}" == "e9f5c6006deb2658"
    # a flat image: every AC coefficient is exactly 0, the median too, so the DC bit alone is set
    # (not 32 bits: distances to such a hash are odd)
    assert [int(v) for v in phash_arrays(np.full((3, 32, 32), [[[0.0]], [[17.0]], [[255.0]]]))] == [0, 2**63, 2**63]
    # the hash sees the image composited on white: transparent = white
    clear, white = Image.new("RGBA", (40, 40), (0, 0, 0, 0)), Image.new("RGB", (40, 40), "white")
    assert phash([decode_image(_png(clear))])[0] == phash([white])[0]


def _synthetic_images() -> dict[str, Image.Image]:
    """Images whose DCT has many coefficients that are zero by symmetry (flat, gradients, mirror
    and point symmetric shapes, a checkerboard) and some that have none (noise, smooth noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    grey = {
        "flat_black": np.zeros((64, 64)), "flat_white": np.full((64, 64), 255.0),
        "flat_odd_size": np.full((50, 70), 137.0),
        "gradient_h": x * 4, "gradient_v": y * 4, "gradient_diagonal": (x + y) * 2, "gradient_anti": (x - y) * 2 + 128,
        "blob": 255 * np.exp(-((x - 30) ** 2 + (y - 36) ** 2) / 300),
        "blob_mirror": 255 * np.exp(-((x - 31.5) ** 2 + (y - 20) ** 2) / 300),
        "blob_centred": 255 * np.exp(-((x - 31.5) ** 2 + (y - 31.5) ** 2) / 200),
        "waves": 127.5 + 127 * np.sin(x / 9) * np.cos(y / 13), "checkerboard": ((x // 8 + y // 8) % 2) * 255,
        "noise": rng.integers(0, 256, (64, 64)), "noise_large": rng.integers(0, 256, (300, 200)),
    }
    images = {k: Image.fromarray(np.clip(v, 0, 255).astype(np.uint8)).convert("RGB") for k, v in grey.items()}
    images["noise_rgb_blurred"] = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).filter(
        ImageFilter.GaussianBlur(6))
    return images


def test_phash_is_imagehash_phash_bit_for_bit():
    imagehash = pytest.importorskip("imagehash")
    # every built-in emoji (3812, as training and eval read them) and the synthetic images; an
    # orthonormal DCT, or an unnormalised one by a single matrix product, differs on 3% of the emoji
    # (mirror-symmetric ones, where the median falls among coefficients that are 0 by symmetry)
    emoji = [(s["__key__"], decode_image(s[image_member(s)]))
             for url in expand_shards("builtin:emoji/*/*.tar") for s in tar_samples(url)]
    images = emoji + list(_synthetic_images().items())
    assert len(emoji) == 3812
    ours = phash([im for _, im in images])
    theirs = [int(str(imagehash.phash(im)), 16) for _, im in images]
    assert [f"{int(h):016x}" for h in ours] == [f"{h:016x}" for h in theirs]
    assert popcount(ours[len(emoji):len(emoji) + 3]).tolist() == [0, 1, 1]  # black, white, grey: flat


def test_phash_finds_every_planted_copy_and_no_other_emoji(planted):
    train, ev = scan([planted["a"]]), scan([planted["eval"]])
    assert len(train) == N_TRAIN and len(ev) == N_PLANTED + N_OTHER and not ev.skipped
    pairs, nearest, best = phash_matches(ev.hashes, train.hashes, PHASH_THRESHOLD)
    found = {(ev.keys[i], train.keys[j]) for i, j, _ in pairs}
    assert found == {*planted["expected"].items(), LOOKALIKE}
    for i, key in enumerate(ev.keys):
        if key in planted["expected"]:
            assert train.keys[nearest[i]] == planted["expected"][key] and best[i] <= 6
        elif key == LOOKALIKE[0]:
            assert train.keys[nearest[i]] == LOOKALIKE[1] and best[i] == 8
        else:  # a different emoji: well clear of the threshold
            assert best[i] >= 18, (key, best[i])


def test_the_exclusion_file_names_the_matched_samples_and_the_stream_skips_exactly_those(planted, tmp_path):
    train_spec = str(planted["root"] / "*" / "train-000000.tar")  # a and b: the same keys in both
    report, lines = overlap(train_spec, [planted["eval"]])
    entry = report["eval_sets"][0]
    # 12 copies + the look-alike; b's samples (same keys, other images) match nothing
    assert (entry["images"], entry["phash"], entry["either"], entry["train_matched"]) == (20, 13, 13, 13)
    assert entry["embedding"] is None and entry["share"] == pytest.approx(13 / 20) and entry["same_key"] == 0
    matched = {*planted["expected"].values(), LOOKALIKE[1]}
    assert len(lines) == 13 and all(line.split("\t")[1].endswith("/a/train-000000.tar") for line in lines)
    assert {line.split("\t")[0] for line in lines} == matched
    listing = tmp_path / "exclude.txt"
    listing.write_text("# found by the test\n" + "\n".join(lines) + "\n")
    excluded = Exclusions.load(listing)
    assert excluded.count_in([planted["a"], planted["b"]]) == 13

    dm = VLPDataModule(train_shards=train_spec, batch_size=9, num_workers=0, image_size=16, context_length=8,
                       seed=0, shuffle_buffer=10, exclude_keys=str(listing))
    assert dm.epoch_batches() == (40 - 13) // 9  # the epoch shrinks by the listed samples
    captions = [c for batch in dm.train_dataloader() for c in dm.on_before_batch_transfer(batch, 0)["caption"]]
    kept_a = {c for k, c in zip(planted["train_keys"], planted["captions"]) if k not in matched}
    # b's samples share the excluded keys and are all trained on; a's listed ones never are
    assert sorted(captions) == sorted(kept_a | {f"b {k}" for k in planted["train_keys"]})
    # every sample read was trained on or excluded; the epoch ends with its 27th trained sample, so a
    # listed sample that comes after it in the shuffled order is not read (here 1 of the 13)
    excluded_read = dm.stats["excluded"]
    assert dm.stats["seen"] == 27 and excluded_read + 27 == dm._positions[0]["raw"] and 12 <= excluded_read <= 13
    assert dm.data_metrics()["data/excluded"] == excluded_read and dm.data_metrics()["data/skipped"] == 0
    assert f"excluded {excluded_read} (data.exclude_keys)" in dm.summary()


def test_vlp_overlap_writes_the_report_and_the_exclusion_list(planted, tmp_path, capsys):
    out, listing = tmp_path / "report", tmp_path / "lists" / "exclude.txt"
    main(["overlap", "--train", planted["a"], "--eval", planted["eval"], "--eval", planted["eval"],
          "--out", str(out), "--write-exclusions", str(listing)])
    printed = capsys.readouterr().out
    assert "eval set" in printed and "65.0%" in printed and "training samples matched: 13" in printed
    report = json.loads((out / "overlap.json").read_text())
    assert len(report["eval_sets"]) == 1  # the same shards twice are one eval set
    entry = report["eval_sets"][0]
    assert (entry["phash"], entry["either"]) == (13, 13)
    # the closest first: the 5 examples are planted copies (the look-alike, at 8 bits, comes last)
    assert entry["examples"][0]["phash_distance"] <= entry["examples"][-1]["phash_distance"]
    assert {x["eval_key"] for x in entry["examples"]} <= set(planted["expected"])
    assert "| eval set | images | pHash |" in (out / "overlap.md").read_text()
    lines = [ln for ln in listing.read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == 13 and len(Exclusions.load(listing)) == 13


def test_built_in_tasks_on_the_same_shards_are_one_eval_set(planted, capsys):
    report, _ = overlap(planted["a"], ["emoji_google_test_retrieval", "emoji_google_test_category"], examples=0)
    (entry,) = report["eval_sets"]
    assert entry["name"] == "builtin:emoji/google/test-*.tar" and entry["images"] == 385
    assert entry["tasks"] == ["emoji_google_test_retrieval", "emoji_google_test_category"]


def test_with_a_checkpoint_the_embeddings_are_compared_too(planted, tmp_path):
    from tests.conftest import fit_tiny_checkpoint

    _, ckpt = fit_tiny_checkpoint("clip_tiny", tmp_path)
    report, _ = overlap(planted["a"], [planted["eval"]], ckpt=str(ckpt), cosine=0.999, device="cpu")
    entry = report["eval_sets"][0]
    assert report["method"]["embedding"]["cosine"] == 0.999
    assert entry["embedding"] is not None and entry["either"] >= entry["phash"] == 13
    assert all("cosine" in x for x in entry["examples"])
    # a resized copy is (nearly) the same picture to the model too
    resized = [x for x in entry["examples"] if x["eval_key"] in ("copy00", "copy01", "copy04")]
    assert resized and all(x["cosine"] > 0.99 and x["cosine_train_key"] == x["train_key"] for x in resized)


@pytest.mark.parametrize("argv, message", [
    (["overlap", "--eval", "X"], "overlap: the following arguments are required: --train"),
    (["overlap", "--train", "A"], "overlap: give at least one --eval TASK_OR_SHARDS"),
    (["overlap", "--train", "A", "--eval", "X", "--threshold", "65"],
     "overlap: --threshold is a Hamming distance in [0, 64], got 65"),
    (["overlap", "--train", "A", "--eval", "emoji_nope_*"], "overlap: --eval 'emoji_nope_*' matches no built-in task"),
    (["overlap", "--train", "A", "--eval", "nope.tar"], "overlap: --eval nope.tar is neither an eval task"),
    (["overlap", "--train", "missing/*.tar", "--eval", "X"], "overlap: --train missing/*.tar: shard path"),
    (["overlap", "--train", "A", "--eval", "X", "--write-exclusions", "DIR"],
     "overlap: --write-exclusions DIR is a folder; give a file"),
])
def test_a_bad_argument_is_a_one_line_error(planted, argv, message, capsys, tmp_path):
    argv = [planted["a"] if a == "A" else planted["eval"] if a == "X" else str(tmp_path) if a == "DIR" else a
            for a in argv]
    assert _error_line(capsys, argv).startswith(f"vlp: error: {message.replace('DIR', str(tmp_path))}")

"""`vlp overlap`: near-duplicates between training images and eval images (CLIP paper, section 5).

    vlp overlap --train 'builtin:emoji/google/train-*.tar' --eval 'emoji_*'
    vlp overlap --train '/data/laion/{00000..00099}.tar' --eval my_task.yaml --eval '/data/val/*.tar' \\
        --ckpt runs/clip_tiny/version_0/checkpoints/last.ckpt --out overlap --write-exclusions exclude.txt

Every image of the training shards and of each eval set is read once (through the checked tar
reader and ``decode_image``, so transparency is composited on white, as training sees it) and
hashed; with ``--ckpt`` the model's image embeddings are computed too (the checkpoint's eval
transform, ``vlp.inference.load``). An ``--eval`` is a built-in task name, a shell pattern over them
(``'emoji_*'``), a task YAML (its ``shards``) or a shard spec; tasks on the same shards make one
eval set.

Perceptual hash (pHash, 64 bits): ``imagehash.phash``'s definition, bit for bit (tested against
the package on every built-in emoji and on synthetic images): the image in grey (``L``), resized to
32x32 (Lanczos), its 2-D DCT-II (unnormalised, as ``scipy.fftpack.dct``: columns, then rows), the
8x8 lowest frequencies (DC included), one bit per coefficient: above their median. Usually 32 bits
are set, but not always: where coefficients tie at the median (a flat image or a gradient, whose
coefficients are mostly exactly 0) fewer are, a flat image's hash has the DC bit alone, and
distances can be odd. Two images are near-duplicates when the Hamming distance of their hashes is
at most ``--threshold`` (default ``PHASH_THRESHOLD`` = 10). Measured on the 1521 built-in google
training emoji (64 px): a resized copy (48 or 100 px) is 0 bits away for half of them and at most
2 for 90%, a JPEG (q=70) copy at most 8 for 99%, a copy cropped by 1 px a side (3%) 4 bits for
half and at most 8 for 90%; a 2-px crop (6%) is 8 for half and up to 22. Unrelated images average
29 bits apart. A nearly blank image hashes its faint details, which a crop moves. The
hash sees shapes in grey only: drawings that differ in colour alone (the hearts, the coloured
circles, flags with the same layout) hash alike (distance 0), and faces that differ in a small
detail fall within 10; on the emoji data a match is therefore "the same drawing or a close
look-alike", and every match is reported with its distance, so the examples can be checked by
eye (benchmarks/results/overlap_report.md).

Embeddings (``--ckpt``): cosine similarity of the L2-normalised image embeddings at least
``--cosine`` (default ``COSINE_THRESHOLD``). How near a near-duplicate is in a model's space
depends on the model: check the examples.

Every (eval, train) pair is compared by ``vlp.search``, in blocks of at most
``vlp.search.MAX_SCORES`` pairs (memory stays bounded): the hashes by XOR and popcount
(``matching_bits``), the embeddings by matrix products; two searches, each eval image's nearest
training image (``topk``) and every pair within the threshold (``pairs_at_least``). Time is
O(eval x train): about 5 s per thousand eval images per million training images on one core for
the hashes (twice the single loop this replaced, and small beside reading a million images).

The report per eval set: images, near-duplicates found by pHash, by embedding and by either,
their share, the training samples matched, and examples (eval key, nearest train key, distance).
``--out DIR`` writes ``overlap.json`` and ``overlap.md``; ``--write-exclusions FILE`` writes every
matched training sample as ``KEY<TAB>SHARD`` (vlp.data.exclusions), which ``data.exclude_keys``
takes to leave them out of training.
"""

from __future__ import annotations

import datetime
import fnmatch
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlp.data.decode import BadSample, decode_image, image_member
from vlp.data.exclusions import format_entry, portable_shard
from vlp.data.shards import expand_shards
from vlp.data.tar_reader import ShardError, tar_samples
from vlp.errors import VLPError
from vlp.search import matching_bits, pairs_at_least, topk

PHASH_THRESHOLD = 10  # Hamming distance (of 64 bits) at or below which two images are near-duplicates
COSINE_THRESHOLD = 0.95  # embedding cosine at or above which two images are near-duplicates
HASH_BITS = 64
_SIDE, _LOW = 32, 8  # the hashed image's side, the low-frequency block's side (8 x 8 = 64 bits)
_BATCH = 512  # images hashed at once


def dct_ii(x: np.ndarray, keep: int) -> np.ndarray:
    """The first ``keep`` coefficients of scipy's unnormalised DCT-II along the last axis,
    ``y[k] = 2 * sum_n x[n] cos(pi k (2n + 1) / 2N)``: float64 ``[..., N]`` -> ``[..., keep]``
    (N a power of 2; ``scipy.fftpack.dct(x)[..., :keep]``, which imagehash calls).

    Computed by halving (the even outputs are the DCT-II of ``x[n] + x[N-1-n]``, the odd ones a
    product of ``x[n] - x[N-1-n]`` with the cosines) rather than by one matrix product, because a
    coefficient that is zero by symmetry (a flat image, a gradient, a mirror-symmetric drawing)
    must come out exactly 0, as scipy's FFT gives it: with a matrix product it is rounding noise,
    the median of the 64 falls among such values, and up to half the bits follow the noise (125 of
    the 3812 built-in emoji hashed differently from imagehash that way).
    """
    n = x.shape[-1]
    if n == 1:
        return 2 * x
    if n % 2:
        raise ValueError(f"dct_ii: the length must be a power of 2, got {n}")
    half = n // 2
    head, tail = x[..., :half], x[..., ::-1][..., :half]
    out = np.empty((*x.shape[:-1], keep))
    out[..., 0::2] = dct_ii(head + tail, (keep + 1) // 2)
    m, j = np.arange(keep // 2)[:, None], np.arange(half)[None, :]
    out[..., 1::2] = (head - tail) @ (2 * np.cos(np.pi * (2 * j + 1) * (2 * m + 1) / (2 * n))).T
    return out


_WEIGHTS = np.uint64(1) << np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64)


def hash_input(image: Image.Image) -> np.ndarray:
    """What the hash reads of an RGB image: grey, 32x32 (Lanczos), as float32 [32, 32]."""
    return np.asarray(image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS), dtype=np.float32)


def phash_arrays(grey: np.ndarray) -> np.ndarray:
    """pHashes of a batch of ``hash_input`` arrays ``[N, 32, 32]`` -> uint64 ``[N]`` (bit 63 first:
    ``f"{h:016x}"`` is imagehash's ``str``)."""
    grey = np.asarray(grey, dtype=np.float64).reshape(-1, _SIDE, _SIDE)
    # imagehash's order (down the columns, then along the rows), so rounding falls as in scipy's
    cols = dct_ii(grey.swapaxes(1, 2), _LOW).swapaxes(1, 2)  # [N, 8 (u), 32 (x)]
    coeffs = dct_ii(cols, _LOW).reshape(len(grey), -1)  # [N, 64]: (u, v) row-major, DC first
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return (bits.astype(np.uint64) * _WEIGHTS).sum(axis=1, dtype=np.uint64)


def phash(images: list[Image.Image]) -> np.ndarray:
    """pHashes (uint64) of RGB PIL images (see the module docstring)."""
    if not images:
        return np.zeros(0, dtype=np.uint64)
    return phash_arrays(np.stack([hash_input(im) for im in images]))


@dataclass
class ImageSet:
    """The images of some shards in set order: keys, their shard, caption (``txt``, for reading the
    examples), hashes, embeddings (or None)."""

    keys: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    embeddings: torch.Tensor | None = None
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.keys)


class Embedder:
    """Image embeddings of a checkpoint (``vlp.inference.load``), L2-normalised."""

    def __init__(self, ckpt: str, device: str = "cpu", batch_size: int = 256):
        from vlp.inference import load

        loaded = load(ckpt, device)
        self.module, data = loaded.module, loaded.data
        self.transform = data.transform()
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Embeddings ``[N, E]`` of transformed images (``self.transform``)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack(images[i:i + self.batch_size]).to(self.device)
            out.append(torch.nn.functional.normalize(self.module.embed("image", batch).float(), dim=-1).cpu())
        return torch.cat(out)


def scan(shards: list[str], embed: Embedder | None = None, batch: int = _BATCH) -> ImageSet:
    """Hash (and embed) every image of ``shards``; samples without a decodable image are
    skipped and counted by reason, an unreadable shard counted ``unreadable_shard``."""
    out = ImageSet()
    hashes, embeddings, grey, inputs = [], [], [], []  # only small arrays wait, never decoded images

    def flush():
        if grey:
            hashes.append(phash_arrays(np.stack(grey)))
            grey.clear()
        if inputs:
            embeddings.append(embed(inputs))
            inputs.clear()

    for url in shards:
        try:
            for sample in tar_samples(url):
                try:
                    image = decode_image(sample[image_member(sample)])
                except BadSample as bad:
                    out.skipped[bad.reason] += 1
                    continue
                grey.append(hash_input(image))
                if embed is not None:
                    inputs.append(embed.transform(image))
                out.keys.append(sample["__key__"])
                out.shards.append(url)
                out.captions.append(sample["txt"].decode("utf-8", "replace")[:60] if "txt" in sample else "")
                if len(grey) >= batch:
                    flush()
        except ShardError:
            out.skipped["unreadable_shard"] += 1
    flush()
    out.hashes = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    if embed is not None:
        out.embeddings = torch.cat(embeddings) if embeddings else torch.zeros(0, 0)
    return out


def _packed(hashes: np.ndarray) -> torch.Tensor:
    """uint64 hashes ``[N]`` -> int64 ``[N, 1]``, the packed bits ``vlp.search.matching_bits`` reads."""
    return torch.from_numpy(np.ascontiguousarray(hashes, dtype=np.uint64).view(np.int64).reshape(-1, 1))


def phash_matches(eval_hashes: np.ndarray, train_hashes: np.ndarray, threshold: int):
    """(eval index, train index, distance) ``[P, 3]`` of every pair within ``threshold``, and each
    eval image's nearest training image (index, distance ``[M]``; the lowest index among equally
    near ones; -1 / 65 without training images)."""
    m, n = len(eval_hashes), len(train_hashes)
    nearest, best = np.full(m, -1, dtype=np.int64), np.full(m, HASH_BITS + 1, dtype=np.int64)
    if n == 0 or m == 0:
        return np.zeros((0, 3), dtype=np.int64), nearest, best
    ev, tr = _packed(eval_hashes), _packed(train_hashes)
    agree, near = topk(ev, tr, 1, score=matching_bits)  # agreeing bits = 64 - distance
    rows, cols, agree_pairs = pairs_at_least(ev, tr, HASH_BITS - threshold, score=matching_bits)
    pairs = torch.stack([rows, cols, HASH_BITS - agree_pairs.long()], dim=1).numpy()
    return pairs, near[:, 0].numpy(), HASH_BITS - agree[:, 0].numpy().astype(np.int64)


def embedding_matches(eval_emb: torch.Tensor, train_emb: torch.Tensor, threshold: float):
    """(eval index ``[P]``, train index ``[P]``, cosine ``[P]``) of every pair at or above
    ``threshold``, and each eval image's nearest training image (index, cosine ``[M]``; -1 / NaN
    without training images)."""
    m, n = eval_emb.shape[0], train_emb.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return (empty, empty, torch.zeros(0)), torch.full((m,), -1, dtype=torch.long), torch.full((m,), float("nan"))
    best, nearest = topk(eval_emb, train_emb, 1)
    return pairs_at_least(eval_emb, train_emb, threshold), nearest[:, 0], best[:, 0]


@dataclass
class EvalSet:
    """An eval set: a name, its shards and the tasks that read them."""

    name: str
    shards: list[str]
    tasks: list[str] = field(default_factory=list)


def eval_sets(specs: list[str]) -> list[EvalSet]:
    """``--eval`` values -> eval sets; tasks on the same shards make one set (named by the
    first task's shard spec)."""
    from vlp.eval.tasks import builtin_tasks, load_task

    names = builtin_tasks()
    sets: dict[tuple[str, ...], EvalSet] = {}
    for spec in specs:
        if any(ch in spec for ch in "*?[") and not Path(spec).suffix:  # a pattern over the built-in tasks
            matched = fnmatch.filter(names, spec)
            if not matched:
                raise VLPError(f"overlap: --eval '{spec}' matches no built-in task (see `vlp eval --list`)")
        elif spec in names or Path(spec).suffix in (".yaml", ".yml"):
            matched = [spec]
        else:
            matched = []
        if matched:
            for name in matched:
                task = load_task(name)
                shards = expand_shards(task.shards) if isinstance(task.shards, str) else list(task.shards)
                label = task.shards if isinstance(task.shards, str) else name
                sets.setdefault(tuple(shards), EvalSet(label, shards)).tasks.append(task.name)
            continue
        try:
            shards = expand_shards(spec)
        except VLPError as e:
            raise VLPError(f"overlap: --eval {spec} is neither an eval task (see `vlp eval --list`) nor shards: "
                           f"{e}") from None
        sets.setdefault(tuple(shards), EvalSet(spec, shards))
    return list(sets.values())


def compare(train: ImageSet, ev: ImageSet, threshold: int, cosine: float | None, examples: int = 5) -> dict:
    """The overlap of one eval set with the training images (one report entry, without names)."""
    pairs, nearest, dist = phash_matches(ev.hashes, train.hashes, threshold)
    by_hash = {int(i) for i in pairs[:, 0]}
    matched_train = {int(j) for j in pairs[:, 1]}
    same_key = {int(i) for i, j, _ in pairs if ev.keys[i] == train.keys[j]}
    cos_best = cos_near = None
    by_embedding: set[int] = set()
    if cosine is not None and ev.embeddings is not None and train.embeddings is not None:
        (rows, cols, _), cos_near, cos_best = embedding_matches(ev.embeddings, train.embeddings, cosine)
        by_embedding |= set(rows.tolist())
        matched_train |= set(cols.tolist())
        same_key |= {i for i, j in zip(rows.tolist(), cols.tolist()) if ev.keys[i] == train.keys[j]}
    either = by_hash | by_embedding
    images = len(ev)

    def example(i: int) -> dict:
        j = int(nearest[i])
        row = {"eval_key": ev.keys[i], "eval_shard": portable_shard(ev.shards[i]), "eval_caption": ev.captions[i],
               "train_key": train.keys[j] if j >= 0 else None,
               "train_shard": portable_shard(train.shards[j]) if j >= 0 else None,
               "train_caption": train.captions[j] if j >= 0 else None,
               "phash_distance": int(dist[i])}
        if cos_best is not None:
            k = int(cos_near[i])
            row.update({"cosine": round(float(cos_best[i]), 4),
                        "cosine_train_key": train.keys[k] if k >= 0 else None})
        return row

    # the closest first: by pHash distance, then (with embeddings) by cosine
    order = sorted(either, key=lambda i: (int(dist[i]), -float(cos_best[i]) if cos_best is not None else 0.0))
    hist = np.bincount(np.minimum(dist, HASH_BITS), minlength=HASH_BITS + 1) if images else np.zeros(0)
    return {
        "images": images,
        "skipped": dict(ev.skipped),
        "phash": len(by_hash),
        "embedding": len(by_embedding) if cos_best is not None else None,
        "either": len(either),
        "share": len(either) / images if images else 0.0,
        "train_matched": len(matched_train),
        # matched eval images with a match under their own key: where keys name items across sets
        # (the emoji code points), a copy of the same item rather than a look-alike of another
        "same_key": len(same_key),
        # how far each eval image's nearest training image is: the margin of the threshold
        "nearest_phash_distance": {str(d): int(c) for d, c in enumerate(hist) if c},
        "examples": [example(i) for i in order[:examples]],
        "_matched_train": sorted(matched_train),
    }


def overlap(train_spec: str, eval_specs: list[str], threshold: int = PHASH_THRESHOLD, ckpt: str | None = None,
            cosine: float = COSINE_THRESHOLD, device: str = "cpu", batch_size: int = 256,
            examples: int = 5) -> tuple[dict, list[str]]:
    """The overlap report (a dict, as written to overlap.json) and the exclusion lines."""
    if not 0 <= threshold <= HASH_BITS:
        raise VLPError(f"overlap: --threshold is a Hamming distance in [0, {HASH_BITS}], got {threshold}")
    if not -1 <= cosine <= 1:
        raise VLPError(f"overlap: --cosine is a cosine similarity in [-1, 1], got {cosine}")
    if examples < 0:
        raise VLPError(f"overlap: --examples must be >= 0, got {examples}")
    if not eval_specs:
        raise VLPError("overlap: give at least one --eval TASK_OR_SHARDS")
    started = time.perf_counter()
    try:
        train_shards = expand_shards(train_spec)
    except VLPError as e:
        raise VLPError(f"overlap: --train {train_spec}: {e}") from None
    sets = eval_sets(eval_specs)
    embed = Embedder(ckpt, device, batch_size) if ckpt else None
    train = scan(train_shards, embed)
    report = {
        "method": {"phash": {"bits": HASH_BITS, "threshold": threshold},
                   "embedding": {"checkpoint": str(Path(ckpt).resolve()), "cosine": cosine} if ckpt else None},
        "train": {"spec": train_spec, "shards": len(train_shards), "images": len(train),
                  "skipped": dict(train.skipped)},
        "eval_sets": [],
    }
    excluded: set[int] = set()
    for s in sets:
        ev = scan(s.shards, embed)
        entry = compare(train, ev, threshold, cosine if ckpt else None, examples)
        excluded |= set(entry.pop("_matched_train"))
        report["eval_sets"].append({"name": s.name, "shards": len(s.shards), "tasks": s.tasks, **entry})
    report["train"]["matched"] = len(excluded)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = sorted({format_entry(train.keys[j], train.shards[j]) for j in excluded})
    return report, lines


def table(report: dict, markdown: bool = False) -> str:
    """The report as a table: one row per eval set."""
    embedded = report["method"]["embedding"] is not None
    head = ["eval set", "images", "pHash", *(["embedding"] if embedded else []), "either", "share", "train matched",
            "tasks"]
    rows = []
    for e in report["eval_sets"]:
        tasks = e["tasks"]
        named = (tasks[0] if len(tasks) == 1 else f"{len(tasks)} tasks") if tasks else "-"
        rows.append([e["name"], str(e["images"]), str(e["phash"]), *([str(e["embedding"])] if embedded else []),
                     str(e["either"]), f"{100 * e['share']:.1f}%", str(e["train_matched"]), named])
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                          *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]

    def fmt(r: list[str]) -> str:
        return "  ".join(x.ljust(w) if i in (0, len(r) - 1) else x.rjust(w)
                         for i, (x, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([fmt(head), *map(fmt, rows)]) + "\n"


def _cell(text: str | None) -> str:
    return "" if text is None else text.replace("|", "\\|").replace("\n", " ")


def markdown_report(report: dict) -> str:
    """overlap.md: the method, the table and the examples of each eval set."""
    m, t = report["method"], report["train"]
    how = f"pHash (64-bit DCT hash) Hamming distance <= {m['phash']['threshold']}"
    if m["embedding"]:
        how += f"; or image-embedding cosine >= {m['embedding']['cosine']} ({m['embedding']['checkpoint']})"
    out = ["# Overlap of eval sets with training data (vlp overlap)\n",
           (f"Training: `{t['spec']}` ({t['shards']} shards, {t['images']} images). Near-duplicate: {how}. "
            f"Training samples matched by any eval set: {t['matched']}. {report['seconds']} s.\n"),
           table(report, markdown=True)]
    for e in report["eval_sets"]:
        if e["tasks"]:
            out.append(f"`{e['name']}`: tasks {', '.join(e['tasks'])}.\n")
        if e["examples"]:
            cols = ["eval key", "caption", "nearest train key", "caption", "train shard", "pHash distance"]
            if m["embedding"]:
                cols += ["cosine", "nearest by embedding"]
            out.append(f"Closest matches of `{e['name']}`:\n")
            out.append("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
            for x in e["examples"]:
                row = [x["eval_key"], _cell(x["eval_caption"]), str(x["train_key"]), _cell(x["train_caption"]),
                       str(x["train_shard"]), str(x["phash_distance"])]
                if m["embedding"]:
                    row += [f"{x['cosine']:.3f}", str(x["cosine_train_key"])]
                out.append("| " + " | ".join(row) + " |")
            out.append("")
        hist = ", ".join(f"{d}: {c}" for d, c in e["nearest_phash_distance"].items() if int(d) <= 16)
        out.append(f"Eval images of `{e['name']}` by pHash distance to their nearest training image "
                   f"(up to 16 bits): {hist or 'none'}.\n")
    return "\n".join(out)

"""Re-shard webdataset tar files: group members by sample key, write N shards.

Used to pack the built-in emoji data into the package (several shards, so that
data workers and ranks each get their own) and by tests to write shards.

    python -m vlp.data.shard_writer OUT_PATTERN N SRC.tar [SRC.tar ...]
    # e.g. python -m vlp.data.shard_writer 'vlp/data/emoji/google/train-%06d.tar' 8 train-000000.tar
"""

from __future__ import annotations

import io
import sys
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlp.data.tar_reader import tar_samples


def read_samples(paths: Iterable[str | Path]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {field: bytes}) for each sample of the tars, in order (vlp.data.tar_reader)."""
    for path in paths:
        for sample in tar_samples(str(path)):
            yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}


def write_shard(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write samples to one tar; members sorted by key then extension; returns the count."""
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, fields in samples:
            for ext in sorted(fields):
                data = fields[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mode = 0o444
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def reshard(src: list[str | Path], out_pattern: str, n_shards: int) -> list[int]:
    """Split the samples of `src` into `n_shards` contiguous, near-equal shards."""
    samples = list(read_samples(src))
    counts = []
    for i in range(n_shards):
        part = samples[i * len(samples) // n_shards : (i + 1) * len(samples) // n_shards]
        counts.append(write_shard(out_pattern % i, part))
    return counts


if __name__ == "__main__":
    print(reshard(sys.argv[3:], sys.argv[1], int(sys.argv[2])))

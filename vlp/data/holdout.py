"""A deterministic hold-out of the training stream, chosen by a hash of the sample key.

``data.holdout: {fraction: 0.05, seed: 0}`` (or just ``0.05``) sets aside the samples whose key
hashes below ``fraction``: training skips them (before decoding; counted ``heldout``, not as
bad) and they are the validation set the ``EvalTasks`` callback evaluates (``val/<task>/...``).

The choice depends on the key (``__key__``, the file name without extension in the shard) and the
seed only: blake2b of ``"SEED:KEY"``, never Python's salted ``hash()``. So it is the same in every
worker, rank, epoch and resumed run, does not depend on which shard holds a sample, and a sample
whose key appears in two sources (the same emoji drawn by Noto and by Twemoji) is on the same side
in both: validation never sees an item that training saw under another source.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from vlp.errors import VLPError

_SCALE = 2.0**64


@dataclass(frozen=True)
class Holdout:
    """Which sample keys are held out: those whose hash of ``"seed:key"`` falls below ``fraction``.

    Args:
        fraction: the share of keys held out, in (0, 1).
        seed: picks another hold-out of the same size.
    """

    fraction: float
    seed: int = 0

    def __post_init__(self):
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 < f < 1:
            raise VLPError(f"data.holdout: fraction must be a number in (0, 1), got {f!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise VLPError(f"data.holdout: seed must be an integer, got {self.seed!r}")

    def held_out(self, key: str) -> bool:
        """Whether the sample with this key is held out (validation) rather than trained on."""
        digest = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.fraction * _SCALE

    def spec(self) -> dict:
        """The settings as data (checkpoints, eval results)."""
        return {"fraction": float(self.fraction), "seed": self.seed}

    @classmethod
    def of(cls, spec: float | dict | Holdout | None) -> Holdout | None:
        """``data.holdout`` as given (a fraction, ``{fraction, seed}``, a Holdout or None), checked."""
        if spec is None or isinstance(spec, Holdout):
            return spec
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - {"fraction", "seed"})
            if unknown:
                raise VLPError(f"data.holdout: unknown key(s) {', '.join(map(str, unknown))}; it takes fraction, seed")
            if "fraction" not in spec:
                raise VLPError(f"data.holdout: no fraction given ({spec!r})")
            return cls(spec["fraction"], spec.get("seed", 0))
        return cls(spec)

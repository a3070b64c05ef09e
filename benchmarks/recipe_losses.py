"""The first training losses of every tiny recipe, bit for bit: a refactor must not move them.

    python benchmarks/recipe_losses.py --out benchmarks/results/recipe_losses.json
    python benchmarks/recipe_losses.py --compare benchmarks/results/recipe_losses.json

Each tiny recipe runs ``--trainer.max_steps 12`` through the real CLI (``run_cli``), at its own
sizes and seed, without its eval callbacks (their end-of-run evaluation does not change the
losses). ``train/loss`` of every step is recorded as ``float.hex`` (exact). lit_tiny locks the
image tower of a 12-step clip_tiny checkpoint written first. ``--compare FILE`` prints, per
recipe, whether the 12 losses are identical to FILE's and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = 12


def tiny_recipes() -> list[str]:
    from vlp.recipes import recipe_names

    return [n for n in recipe_names() if n.endswith("_tiny")]


def run(name: str, root: Path, extra: list[str]) -> tuple[list[float], float]:
    from lightning.pytorch import Callback

    from vlp.callbacks import EvalTasks
    from vlp.cli import run_cli

    losses: list[float] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    cli = run_cli(["--recipe", name, "--trainer.max_steps", str(STEPS), "--trainer.default_root_dir", str(root / name),
                   "--trainer.enable_progress_bar", "false", *extra], run=False)
    trainer = cli.trainer
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, EvalTasks)] + [Record()]
    start = time.perf_counter()
    trainer.fit(cli.model, cli.datamodule)
    return losses, time.perf_counter() - start


def last_checkpoint(root: Path) -> str:
    found = sorted(root.rglob("last.ckpt"))
    if not found:
        raise SystemExit(f"no last.ckpt under {root}")
    return str(found[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", help="comma-separated (default: every *_tiny recipe)")
    p.add_argument("--out", help="write the losses here (JSON)")
    p.add_argument("--compare", help="compare with this JSON of an earlier run")
    args = p.parse_args()
    names = args.recipes.split(",") if args.recipes else tiny_recipes()
    if "lit_tiny" in names:  # it locks a clip_tiny tower: run clip_tiny first
        names = ["clip_tiny"] + [n for n in names if n != "clip_tiny"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in names:
            extra = []
            if name == "lit_tiny":
                extra = ["--model.towers.image.init_args.init_from", last_checkpoint(root / "clip_tiny")]
            losses, seconds = run(name, root, extra)
            results[name] = {"losses": [x.hex() for x in losses], "seconds": round(seconds, 1)}
            print(f"{name:<28} {len(losses)} steps  first {losses[0]:.6f}  last {losses[-1]:.6f}  ({seconds:.0f} s)",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        for name, r in results.items():
            if name not in before:
                print(f"{name}: not in {args.compare}")
                continue
            a = [float.fromhex(x) for x in before[name]["losses"]]
            b = [float.fromhex(x) for x in r["losses"]]
            same = a == b
            diff = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
            print(f"{name:<28} {'identical' if same else 'DIFFERENT'}  max |diff| {diff:.3g}")


if __name__ == "__main__":
    main()

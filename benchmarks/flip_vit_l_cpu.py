"""`vlp fit --recipe flip_vit_l` at full size on CPUs: DeepSpeed ZeRO-2 (the recipe's strategy)
and bf16-mixed (the recipe's precision) on 2 gloo processes, one optimiser step at batch 2 per
process; the peak resident memory of every process.

    python benchmarks/flip_vit_l_cpu.py [--devices 2] [--batch-size 2] [--steps 1]
        [--out benchmarks/results/flip_vit_l_cpu.md] [extra vlp fit overrides ...]

The run is the real command, ``python -m vlp.cli fit --recipe flip_vit_l`` with
``--trainer.accelerator cpu --trainer.devices N`` (Lightning starts the other processes), on the
recipe's data (the built-in emoji shards, 224 px), without the recipe's evaluation and
checkpoint callbacks (``--trainer.callbacks`` holds UnmaskedTuning, as the recipe, and this
file's MemoryProbe) and with ``data.num_workers 0`` (the data are decoded in the measured
process). Every process writes its numbers: peak resident set (VmHWM) after the model, the
DeepSpeed engine and the ZeRO-2 optimiser were set up, the peak over the training steps (the
peak is reset before the first step through /proc/self/clear_refs where the kernel allows it,
else it is the process's peak), the resident set after the last step, and the step times.
Appends a table to ``--out``.

Needs about 4-6 GB of memory per process at full size (ViT-L/16 + 12 x 768 text: ~0.4 B
parameters; bf16 weights and gradients, fp32 master weights and AdamW states partitioned over
the processes). Extra arguments go to ``vlp fit`` (e.g. small towers to try the script:
``--model.towers.image.model_kwargs '{depth: 2}' --data.image_size 64``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

try:
    from lightning.pytorch import Callback
except ImportError:  # the parent only launches; the ranks import Lightning
    Callback = object


def _status(field: str) -> float:
    """A /proc/self/status field (kB) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


class MemoryProbe(Callback):
    """In every rank: memory and step times, written to ``out/rank{R}.json`` at the end."""

    def __init__(self, out: str):
        self.out = out
        self.facts: dict = {"step_s": []}
        self._start = 0.0

    def on_train_start(self, trainer, pl_module):
        strategy = trainer.strategy
        config = getattr(strategy, "config", None) or {}
        self.facts.update(
            strategy=type(strategy).__name__, zero_stage=config.get("zero_optimization", {}).get("stage"),
            precision=str(trainer.precision), world_size=trainer.world_size,
            optimizer=type(getattr(strategy.model, "optimizer", None)).__name__,
            params=sum(p.numel() for p in pl_module.parameters()),
            setup_peak_mib=_status("VmHWM"), setup_rss_mib=_status("VmRSS"),
        )
        self.facts["peak_reset"] = _reset_peak()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.facts.setdefault("batch_per_process", int(batch["image"].shape[0]))
        self.facts.setdefault("image_size", int(batch["image"].shape[-1]))
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.facts["step_s"].append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module):
        self.facts.update(step_peak_mib=_status("VmHWM"), end_rss_mib=_status("VmRSS"),
                          global_step=trainer.global_step)
        loss = trainer.callback_metrics.get("train/loss")
        self.facts["loss"] = None if loss is None else float(loss)
        Path(self.out).mkdir(parents=True, exist_ok=True)
        with open(Path(self.out) / f"rank{trainer.global_rank}.json", "w") as f:
            json.dump(self.facts, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2, help="CPU processes")
    p.add_argument("--batch-size", type=int, default=2, help="data.batch_size (per process)")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per process (default: cores / devices)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "flip_vit_l_cpu.md")
    args, extra = p.parse_known_args()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.devices)

    with tempfile.TemporaryDirectory() as tmp:
        facts_dir = Path(tmp) / "facts"
        probe = f"{{class_path: flip_vit_l_cpu.MemoryProbe, init_args: {{out: '{facts_dir}'}}}}"
        callbacks = f"[{{class_path: vlp.callbacks.UnmaskedTuning, init_args: {{start_fraction: 0.95}}}}, {probe}]"
        cmd = [sys.executable, "-m", "vlp.cli", "fit", "--recipe", "flip_vit_l", "--trainer.accelerator", "cpu",
               "--trainer.devices", str(args.devices), "--trainer.max_steps", str(args.steps),
               "--trainer.max_epochs", "-1", "--trainer.log_every_n_steps", "1", "--trainer.callbacks", callbacks,
               "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
               "--trainer.logger", "false", "--trainer.default_root_dir", tmp,
               "--data.batch_size", str(args.batch_size), "--data.num_workers", "0", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}
        print(shlex.join(cmd[1:]), flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"vlp fit failed with exit status {done.returncode}")
        ranks = [json.loads((facts_dir / f"rank{r}.json").read_text()) for r in range(args.devices)]

    first = ranks[0]
    lines = [
        f"\n## flip_vit_l on CPU, {time.strftime('%Y-%m-%d %H:%M')}\n",
        f"`{shlex.join(['vlp', 'fit', '--recipe', 'flip_vit_l', *cmd[6:]])}`\n".replace(str(facts_dir), "FACTS")
        .replace(tmp, "TMP"),
        (f"- {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.devices} processes x "
         f"{threads} threads; {first['strategy']} ZeRO-{first['zero_stage']}, {first['precision']}, "
         f"{first['optimizer']}; {first['params'] / 1e6:.1f} M parameters; batch {first.get('batch_per_process')} "
         f"per process at {first.get('image_size')} px ({first.get('batch_per_process', 0) * args.devices} in all); "
         f"{first['global_step']} step(s); loss {first['loss']}; whole command {wall:.0f} s"),
        f"- peak memory reset before the first step: {all(r['peak_reset'] for r in ranks)}\n",
        "| rank | peak RSS after setup (MiB) | peak RSS in the steps (MiB) | RSS at the end (MiB) | step time (s) |",
        "|---:|---:|---:|---:|---|",
    ]
    for r, facts in enumerate(ranks):
        steps = ", ".join(f"{s:.1f}" for s in facts["step_s"])
        lines.append(f"| {r} | {facts['setup_peak_mib']:.0f} | {facts['step_peak_mib']:.0f} | "
                     f"{facts['end_rss_mib']:.0f} | {steps} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()

"""Memory per process and step time of DDP, DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2 on 2 processes,
for a tiny and a mid-size CLIP, against a written memory model (benchmarks/memory_model.py).

    python benchmarks/sharding.py [--sizes tiny,mid] [--strategies ddp,zero2,zero3,fsdp2]
        [--steps 8] [--batch-size 32] [--accelerator cpu]

Each (size, strategy) is one `torch.distributed.run` of 2 processes that runs `vlp fit --recipe
clip_tiny` (size overrides below, fp32, random-free data: the built-in emoji shards) for
``--steps`` steps. A callback records every step's wall time (median after 3 warm-up steps)
and, per process, the peak resident set (VmHWM) and the resident set after the model, the
optimiser and the first step exist; the model-states part of memory is compared with the
memory model's prediction for that strategy (fp32: the run's own precision).
Appends a table to benchmarks/results/sharding.md. Run it alone (timings and memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import append_result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {  # clip_tiny overrides
    "tiny": [],
    "mid": ["--model.towers.image.embed_dim", "512",
            "--model.towers.image.model_kwargs", "{patch_size: 8, embed_dim: 512, depth: 8, num_heads: 8, pre_norm: true}",
            "--model.towers.text.width", "512", "--model.towers.text.layers", "8", "--model.towers.text.heads", "8",
            "--model.towers.text.embed_dim", "512"],
}
STRATEGIES = {
    "ddp": "ddp",
    "zero2": "vlp_deepspeed_stage_2",
    "zero3": "{class_path: vlp.strategies.DeepSpeedStrategy, init_args: {stage: 3, param_persistence_threshold: 0}}",
    "fsdp2": "{class_path: lightning.pytorch.strategies.ModelParallelStrategy, "
             "init_args: {data_parallel_size: 2, tensor_parallel_size: 1}}",
}


def rss_mb(field: str) -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) / 1024


def _child(size: str, strategy: str, steps: int, batch: int, accelerator: str, out: str) -> None:
    """One run on this rank (under torch.distributed.run)."""
    import deepspeed  # noqa: F401 - every strategy's process holds the same libraries
    from lightning.pytorch import Callback

    from vlp.cli import run_cli

    class Meter(Callback):
        def __init__(self):
            self.times, self.start, self.after_first = [], 0.0, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self.start)
            if self.after_first is None:
                self.after_first = rss_mb("VmRSS")

        def on_train_end(self, trainer, pl_module):
            params = sum(p.numel() for p in pl_module.parameters())
            if any(hasattr(p, "ds_numel") for p in pl_module.parameters()):  # ZeRO-3: the whole sizes
                params = sum(getattr(p, "ds_numel", p.numel()) for p in pl_module.parameters())
            elif any(hasattr(p, "full_tensor") for p in pl_module.parameters()):  # FSDP2 DTensors
                params = sum(p.shape.numel() for p in pl_module.parameters())
            def whole(p):
                return getattr(p, "ds_numel", None) or p.shape.numel()

            units = [sum(whole(p) for p in unit.parameters()) for tower in pl_module.towers.values()
                     for unit in (tower.shard_units() if hasattr(tower, "shard_units") else [])]
            record = {"rank": trainer.global_rank, "times": self.times, "peak_mb": rss_mb("VmHWM"),
                      "after_first_mb": self.after_first, "params": params, "largest_unit": max(units or [0])}
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    import vlp.cli  # noqa: F401

    meter = Meter()
    cli = run_cli(["--recipe", "clip_tiny", *SIZES[size], "--data.batch_size", str(batch),
                   "--data.num_workers", "1", "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
                   "--trainer.callbacks", "[]", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.accelerator", accelerator,
                   "--trainer.devices", "2", "--trainer.precision", "32-true", "--trainer.strategy", STRATEGIES[strategy],
                   "--trainer.default_root_dir", out], run=False)
    cli.trainer.callbacks.append(meter)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,mid")
    ap.add_argument("--strategies", default="ddp,zero2,zero3,fsdp2")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32, help="per process")
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child, args.steps, args.batch_size, args.accelerator, args.out)
        return
    from memory_model import model_states_bytes

    rows = []
    for size in args.sizes.split(","):
        for strategy in args.strategies.split(","):
            out = tempfile.mkdtemp(prefix=f"vlp-shard-{size}-{strategy}-")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(_free_port()), __file__, "--child", size, strategy, "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--accelerator", args.accelerator, "--out", out]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"{size} {strategy} failed:\n{done.stderr[-4000:]}")
            ranks = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in (0, 1)]
            step_s = statistics.median(t for r in ranks for t in r["times"][3:])
            params = ranks[0]["params"]
            predicted = model_states_bytes(params, world=2, strategy=strategy, precision="fp32",
                                           largest_unit=ranks[0]["largest_unit"]) / 2**20
            row = {"size": size, "strategy": strategy, "params": params, "step_s": step_s,
                   "peak_mb": max(r["peak_mb"] for r in ranks), "after_first_mb": max(r["after_first_mb"] for r in ranks),
                   "predicted_states_mb": predicted}
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [f"\n## {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores ({platform.machine()}), "
             f"{args.accelerator}, 2 processes (1 thread each), fp32",
             "", f"`python benchmarks/sharding.py --sizes {args.sizes} --strategies {args.strategies} "
             f"--steps {args.steps} --batch-size {args.batch_size}`", "",
             "| size | strategy | parameters | step s | samples/s (both) | peak RSS / process MB | "
             "vs DDP | model states, model MB | measured difference to DDP MB | model's difference MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ddp = next((d for d in rows if d["size"] == r["size"] and d["strategy"] == "ddp"), None)
        vs = f"{r['peak_mb'] / ddp['peak_mb']:.2f}" if ddp else "-"
        measured = f"{r['peak_mb'] - ddp['peak_mb']:+.0f}" if ddp else "-"
        modelled = f"{r['predicted_states_mb'] - ddp['predicted_states_mb']:+.0f}" if ddp else "-"
        lines.append(f"| {r['size']} | {r['strategy']} | {r['params'] / 1e6:.1f} M | {r['step_s']:.3f} | "
                     f"{2 * args.batch_size / r['step_s']:.1f} | {r['peak_mb']:.0f} | {vs} | "
                     f"{r['predicted_states_mb']:.0f} | {measured} | {modelled} |")
    append_result("sharding", "# Sharding on 2 processes: memory per process and step time\n\nPeak RSS includes the "
                  "interpreter, torch, DeepSpeed and the data worker's share of nothing (workers are separate "
                  "processes); the memory model (benchmarks/memory_model.py) predicts the model states "
                  "(parameters, gradients, optimiser states, communication buffers), so its *differences* "
                  "between strategies are what the measured differences check.\n", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    main()

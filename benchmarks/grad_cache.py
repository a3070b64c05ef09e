"""Peak memory and step time of the gradient cache (vlp.step.GradCacheStep) against batch size,
with and without the cache, for one recipe's model.

    python benchmarks/grad_cache.py [--recipe clip_tiny] [--batches 64,256,1024] [--chunk 64]
        [--steps 2] [extra recipe overrides ...]

Each (batch size, step) pair runs in a fresh process: the recipe's model is built through the
real CLI (no training run), with AdamW, then times full optimiser steps on one batch of
random images and real captions (1 warm-up step, then ``--steps`` timed; the median).
Memory is the process's peak resident set (VmHWM; on CUDA the peak allocated memory) and
its rise over the resident set just before the first step (model, optimiser, batch).
The goal (issue: Scale): batch 1024 with the cache within 1.5x the peak of batch 64 without.
Appends a table to benchmarks/results/grad_cache.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from report import append_result


def rss_mb(field: str) -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) / 1024


def one(args, extra) -> dict:
    """In the child: build, step, measure; print one JSON line."""
    import torch

    from vlp.cli import run_cli
    from vlp.step import GradCacheStep, PlainStep

    torch.manual_seed(0)
    cli = run_cli(["--recipe", args.recipe, "--trainer.logger", "false", "--trainer.strategy", "auto",
                   "--trainer.devices", "1", *extra], run=False)
    model, data = cli.model.to(args.device).train(), cli.datamodule
    size, n = data.image_size, args.batch
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(n, 3, size, size, generator=g).to(args.device),
             "text": data.tokenizer([f"emoji number {i}" for i in range(n)]).to(args.device)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.log = lambda *a, **k: None  # no trainer here
    cache = GradCacheStep(args.chunk) if args.mode == "cache" else None
    if cache is not None:
        cache.bind(model)

    def step() -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if cache is None:
            loss = PlainStep()(model, batch, 0)
            loss.backward()
        else:
            cache.gradients(model, batch)
        opt.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    before = rss_mb("VmRSS")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    step()
    times = [step() for _ in range(args.steps)]
    out = {"batch": n, "mode": args.mode, "step_s": statistics.median(times), "peak_mb": rss_mb("VmHWM"),
           "rise_mb": rss_mb("VmHWM") - before}
    if args.device == "cuda":
        out.update(peak_mb=torch.cuda.max_memory_allocated() / 2**20,
                   rise_mb=torch.cuda.max_memory_allocated() / 2**20 - base_cuda)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="clip_tiny")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=["plain", "cache"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args()
    if args.child:
        args.mode = args.child
        print("RESULT " + json.dumps(one(args, extra)), flush=True)
        return
    rows = []
    for n in [int(b) for b in args.batches.split(",")]:
        for mode in ("plain", "cache"):
            cmd = [sys.executable, __file__, "--child", mode, "--batch", str(n), "--recipe", args.recipe,
                   "--chunk", str(args.chunk), "--steps", str(args.steps), "--device", args.device, *extra]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"batch {n} {mode} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(line[7:]))
            print(json.dumps(rows[-1]), flush=True)
    base = next(r for r in rows if r["mode"] == "plain" and r["batch"] == min(r["batch"] for r in rows))
    command = (f"python benchmarks/grad_cache.py --recipe {args.recipe} --batches {args.batches} --chunk {args.chunk} "
               f"--steps {args.steps}" + (f" --device {args.device}" if args.device != "cpu" else "")
               + (" " + " ".join(extra) if extra else ""))
    unit = "CUDA peak allocated" if args.device == "cuda" else "peak RSS"
    lines = [f"\n## {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores ({platform.machine()}), {args.device}",
             "", f"`{command}`", "",
             f"| batch | step | step s | samples/s | {unit} MB | rise over start MB | peak / plain batch {base['batch']} |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        label = "plain" if r["mode"] == "plain" else f"cache (chunk {args.chunk})"
        lines.append(f"| {r['batch']} | {label} | {r['step_s']:.3f} | {r['batch'] / r['step_s']:.1f} | "
                     f"{r['peak_mb']:.0f} | {r['rise_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.2f} |")
    append_result("grad_cache", "# Gradient cache: memory and step time against batch size\n\nOne process per row; "
                  "peak RSS includes the interpreter, torch and the model (on CPU), so the ratio column is "
                  "what a user sees; the rise column is the step's own memory.\n", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

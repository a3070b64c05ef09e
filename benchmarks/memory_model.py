"""A memory model for data-parallel CLIP training: model states per strategy (Rajbhandari et al.
2020, ZeRO, sec. 3-5) and activations per sample (Korthikanti et al. 2022, sec. 4, with fused
attention), checked against the CPU runs of benchmarks/sharding.py and grad_cache.py, and
applied to flip_vit_l at a global batch of 32k on 64 and 256 GPUs.

    python benchmarks/memory_model.py [--recipe flip_vit_l] [--global-batch 32768] [--gpus 64,256]

Writes benchmarks/results/memory_model.md. The formulas are in ``model_states_bytes`` and
``activation_bytes_per_sample``; the numbers of a recipe come from its built model (parameter
count) and its data settings (tokens per tower).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from report import append_result

HERE = Path(__file__).resolve().parent
GiB = 2**30

# Lightning's DeepSpeed defaults (reduce / allgather buckets, elements), ZeRO-3's prefetch and
# live-parameter limits (DeepSpeed's defaults).
REDUCE_BUCKET = 200_000_000
ALLGATHER_BUCKET = 200_000_000
STAGE3_PREFETCH = 50_000_000


def model_states_bytes(params: int, world: int, strategy: str, precision: str = "bf16",
                       largest_unit: int = 0, touched_buckets: bool = True) -> float:
    """Bytes per process of parameters, gradients, optimiser states (AdamW: two moments) and the
    strategy's communication buffers, for ``params`` parameters over ``world`` processes.

    precision ``fp32``: fp32 weights, gradients and moments (the CPU runs). ``bf16``: DeepSpeed
    bf16 (bf16 weights and gradients, fp32 master weights and moments: ZeRO's K = 12), and for
    DDP / FSDP2 Lightning's bf16-mixed (fp32 weights, gradients and moments; autocast copies
    are activations). ``largest_unit``: FSDP2's / ZeRO-3's largest gathered unit (parameters).
    ``touched_buckets``: on CPU, untouched pages of DeepSpeed's pre-allocated buckets do not
    count in the resident set (only ``min(bucket, params)`` of each is written); on GPUs the
    whole bucket is allocated (False).
    """
    p, n = float(params), float(world)
    bucket = lambda size: min(size, p) if touched_buckets else size  # noqa: E731
    if precision == "fp32":
        if strategy == "ddp":  # weights, gradients, DDP's bucket copy of the gradients, 2 moments
            return 4 * p + 4 * p + 4 * p + 8 * p
        if strategy in ("zero1", "zero2"):
            # whole fp32 weights; fp32 master partition (a copy even in fp32), 2 moments of the
            # partition; ZeRO-2: gradient partition plus two contiguous reduce buckets;
            # ZeRO-1: whole gradients
            grads = 4 * p / n + 2 * 4 * bucket(REDUCE_BUCKET) if strategy == "zero2" else 4 * p
            return 4 * p + 4 * p / n + 8 * p / n + grads
        if strategy == "zero3":  # everything partitioned; a gathered unit and prefetch in flight
            return (4 + 4 + 4 + 8) * p / n + 4 * (largest_unit + min(STAGE3_PREFETCH, p))
        if strategy == "fsdp2":  # sharded weights, gradients, moments; one unit gathered at a time
            return (4 + 4 + 8) * p / n + 2 * 4 * largest_unit
    else:
        if strategy == "ddp":
            return 4 * p + 4 * p + 4 * p + 8 * p
        if strategy == "zero1":
            return 2 * p + 2 * p + 12 * p / n
        if strategy == "zero2":
            return 2 * p + (2 + 12) * p / n + 2 * 2 * bucket(REDUCE_BUCKET)
        if strategy == "zero3":
            return 16 * p / n + 2 * (largest_unit + STAGE3_PREFETCH)
        if strategy == "fsdp2":
            return (4 + 4 + 8) * p / n + 2 * 4 * largest_unit
    raise ValueError(f"unknown strategy {strategy!r} / precision {precision!r}")


def activation_bytes_per_sample(towers: list[tuple[int, int, int, int]], bytes_per_value: int = 2) -> float:
    """Activations kept for the backward, per sample: per transformer layer ``34 s h`` bytes at
    2 bytes per value (Korthikanti et al. 2022, eq. 1, without the attention-score term, which
    fused attention does not store; their count includes 1-byte dropout masks, so fp32 is
    about ``bytes_per_value / 2`` times it). ``towers``: (layers, tokens s, width h, heads)."""
    return sum(layers * 34 * s * h for layers, s, h, _ in towers) * bytes_per_value / 2


def recipe_shapes(recipe: str) -> dict:
    """Parameter counts and transformer shapes of a recipe's model (built on the meta device)."""
    import torch

    from vlp.cli import run_cli

    with torch.device("meta"):
        cli = run_cli(["--recipe", recipe, "--trainer.logger", "false", "--trainer.strategy", "auto",
                       "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true"],
                      run=False)
    model, data = cli.model, cli.datamodule
    image = model.towers["image"]
    trunk = image.trunk
    ratio = getattr(image, "mask_ratio", 0.0) or 0.0
    patches = trunk.patch_embed.num_patches
    kept = max(1, int(patches * (1 - ratio))) + getattr(trunk, "num_prefix_tokens", 1)
    text = model.towers["text"] if "text" in model.towers else None
    units = [sum(p.numel() for p in b.parameters()) for t in model.towers.values()
             for b in (t.shard_units() if hasattr(t, "shard_units") else [])]
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "image": (len(trunk.blocks), kept, trunk.embed_dim, trunk.blocks[0].attn.num_heads),
        "text": (len(text.blocks), text.context_length, text.width, text.blocks[0].attn.heads) if text is not None else None,
        "largest_unit": max(units) if units else 0,
        "mask_ratio": ratio,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="flip_vit_l")
    ap.add_argument("--global-batch", type=int, default=32768)
    ap.add_argument("--gpus", default="64,256")
    ap.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (A100/H100 80 GB)")
    args = ap.parse_args()
    shapes = recipe_shapes(args.recipe)
    towers = [shapes["image"]] + ([shapes["text"]] if shapes["text"] else [])
    act = activation_bytes_per_sample(towers, bytes_per_value=2)
    lines = [f"\n## {time.strftime('%Y-%m-%d')}: {args.recipe}, global batch {args.global_batch}, bf16",
             "", f"`python benchmarks/memory_model.py --recipe {args.recipe} --global-batch {args.global_batch} "
             f"--gpus {args.gpus}`", "",
             f"Parameters {shapes['params'] / 1e6:.0f} M; image tower {shapes['image'][0]} layers x "
             f"{shapes['image'][1]} tokens (mask {shapes['mask_ratio']:g}) x {shapes['image'][2]}; text "
             + (f"{shapes['text'][0]} layers x {shapes['text'][1]} tokens x {shapes['text'][2]}" if shapes["text"] else "-")
             + f"; activations {act / 2**20:.0f} MiB per sample (bf16, fused attention); largest block "
             f"{shapes['largest_unit'] / 1e6:.1f} M parameters.", "",
             "| GPUs | per-GPU batch | strategy | model states GiB | activations GiB | contrastive logits GiB | "
             f"total GiB | fits {args.gpu_gib:g} GiB | with activation checkpointing GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for gpus in [int(g) for g in args.gpus.split(",")]:
        local = args.global_batch // gpus
        logits = 3 * 4 * local * args.global_batch  # fp32 logits, softmax and their gradient (CLIP loss)
        for strategy in ("ddp", "zero2", "zero3"):
            states = model_states_bytes(shapes["params"], gpus, strategy, "bf16", shapes["largest_unit"],
                                        touched_buckets=False)
            acts = act * local
            # checkpointing keeps one layer's input per layer plus one layer's full activations
            ckpt = sum(layers * s * h * 2 for layers, s, h, _ in towers) * local + max(
                34 * s * h for _, s, h, _ in towers) * local
            total = states + acts + logits
            lines.append(f"| {gpus} | {local} | {strategy} | {states / GiB:.1f} | {acts / GiB:.1f} | "
                         f"{logits / GiB:.2f} | {total / GiB:.1f} | {'yes' if total < args.gpu_gib * GiB else 'no'} | "
                         f"{(states + ckpt + logits) / GiB:.1f} |")
    append_result("memory_model", "# Memory model\n\nModel states: ZeRO's accounting (bf16: 2 bytes of weights, 2 of "
                  "gradients, 12 of fp32 master weights and AdamW moments per parameter; DDP under "
                  "Lightning's bf16-mixed keeps fp32 weights, gradients, moments and DDP's gradient bucket "
                  "copy: 20 bytes), plus DeepSpeed's buffers (two reduce buckets of 2e8 elements for ZeRO-2, "
                  "Lightning's default; ZeRO-3's prefetch). Activations: 34 s h bytes per layer and sample "
                  "(Korthikanti et al. 2022) with fused attention. Checked on CPU in "
                  "benchmarks/results/sharding.md (differences between strategies) and grad_cache.md "
                  "(activations per sample). See `python benchmarks/memory_model.py --help`.\n",
                  "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE.parent))
    main()

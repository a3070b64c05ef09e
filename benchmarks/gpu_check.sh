#!/usr/bin/env bash
# The GPU check of the Scale issue, one command on one CUDA GPU (about 10 minutes):
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/gpu_check/
#
# 1. clip_vit_b16 (ViT-B/16 + 12 x 512 text, 224 px, batch 256, bf16-mixed) on the built-in
#    emoji shards, 80 steps: step time, samples/s and MFU from vlp.callbacks.ThroughputMonitor
#    (FLOPs counted on a meta copy; peak from Lightning's device table), under DDP (one
#    process) and under DeepSpeed ZeRO-2 (one process, vlp_deepspeed_stage_2), with the
#    peak CUDA memory of each.
# 2. benchmarks/vs_open_clip.py on CUDA in bf16 (vlp vs open_clip, same config, alternating).
# 3. benchmarks/step_time.py clip_vit_b16 vs coca_vit_b16 vs flip_vit_b16 (bf16 autocast off:
#    fp32 reference) and benchmarks/coca_generation.py on CUDA.
# Every part has its own time limit, so one failure does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
OUT=benchmarks/results/gpu_check
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"

for strategy in ddp vlp_deepspeed_stage_2; do
  timeout 240 python - "$strategy" "$OUT" <<'PY' 2>&1 | tail -n 20 | tee "$OUT/clip_vit_b16_$strategy.txt"
import json, sys, time
import torch
from vlp.cli import run_cli
from vlp.callbacks import ThroughputMonitor
strategy, out = sys.argv[1], sys.argv[2]
monitor = ThroughputMonitor(log_every_n_steps=20, warmup_steps=10)
cli = run_cli(["fit", "--recipe", "clip_vit_b16", "--trainer.devices", "1", "--trainer.strategy", strategy,
               "--trainer.max_steps", "80", "--trainer.max_epochs", "-1", "--trainer.callbacks", "[]",
               "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", f"/tmp/gpu_check_{strategy}"],
              run=False)
cli.trainer.callbacks.append(monitor)
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
record = {"strategy": strategy, "wall_s": time.perf_counter() - start, **monitor.last,
          "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30}
print(json.dumps(record))
open(f"{out}/clip_vit_b16_{strategy}.json", "w").write(json.dumps(record))
PY
done

timeout 200 python benchmarks/vs_open_clip.py --device cuda --precision bf16 --steps 100 --batch-size 256 2>&1 \
  | tail -n 25 | tee "$OUT/vs_open_clip.txt"
timeout 120 python benchmarks/step_time.py --recipes clip_vit_b16,flip_vit_b16,coca_vit_b16 --steps 10 \
  --batch-size 64 --device cuda 2>&1 | tail -n 8 | tee "$OUT/step_time.txt"
timeout 120 python benchmarks/coca_generation.py --device cuda 2>&1 | tail -n 20 | tee "$OUT/coca_generation.txt"
echo "done: $OUT"

"""vlp and open_clip side by side: the same CLIP architecture, batches, precision, optimiser.

    pip install -e '.[bench]'
    python benchmarks/vs_open_clip.py [--steps 330] [--batch-size 64] [--device cpu|cuda]
    python benchmarks/vs_open_clip.py --load-open-clip model.pt   # only: vlp's eval vs open_clip's

Architecture (clip_tiny's): ViT 4 x 256, patch 8, 64 px, pre-norm; causal text transformer
4 x 256, 4 heads, 16 tokens, vocabulary 8192; embedding 256. vlp builds it from the clip_tiny
recipe (timm ViT + vlp TextTransformer); open_clip gets it as a model config (open_clip.CLIP,
text pooled at the end-of-text id of vlp's tokenizer). Both read the same batches from vlp's
data pipeline (the recipe's data, batch, crops), in fp32 (or --precision bf16 on GPUs), with
AdamW lr 5e-4, wd 0.2 (each library's own no-decay rule), betas 0.9/0.98, eps 1e-6, 20 warmup
steps and cosine decay, and take turns step by step (the order flips every step). Reported:
median train-step time and samples/s of each over the run (first 5 steps left out), the ratio
vlp / open_clip, peak memory of each (a separate short process per library: RSS growth over
the process's baseline on CPU (VmHWM after resetting it), max allocated on GPU), and the emoji tasks after the same number of steps, both evaluated by
vlp's eval. Then the check of the two evaluations: open_clip's own zero-shot classifier
(open_clip.build_zero_shot_classifier) against vlp's on the open_clip model.
Appends to benchmarks/results/vs_open_clip.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from open_clip_reference import Encoders  # noqa: E402
from report import append_result  # noqa: E402

OPEN_CLIP_CFG = dict(
    embed_dim=256,
    vision_cfg=dict(image_size=64, layers=4, width=256, patch_size=8, head_width=64),
    text_cfg=dict(context_length=16, vocab_size=8192, width=256, heads=4, layers=4, pad_id=0, eos_id=2,
                  pool_type="eos"),
)
TASKS = ["emoji_google_test_retrieval", "emoji_twitter_test_retrieval", "emoji_google_test_category"]
SHOWN = [("emoji_google_test_retrieval", "image_to_text_R@1"), ("emoji_google_test_retrieval", "image_to_text_R@5"),
         ("emoji_twitter_test_retrieval", "image_to_text_R@1"), ("emoji_google_test_category", "top1")]


def build_vlp(args):
    from vlp.cli import run_cli

    cli = run_cli(["--recipe", "clip_tiny", "--trainer.logger", "false", "--data.batch_size", str(args.batch_size),
                   "--seed_everything", str(args.seed)], run=False)
    return cli.model.to(args.device), cli.datamodule


def build_open_clip(args):
    import open_clip

    torch.manual_seed(args.seed)
    return open_clip.CLIP(**OPEN_CLIP_CFG).to(args.device)


def schedule(opt, total: int, warmup: int = 20):
    from vlp.optim import lr_factor

    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, "cosine"))


def vlp_trainer(module, total):
    from vlp.optim import OptimConfig, build_optimizer

    module.log = lambda *a, **k: None
    opt, sched = build_optimizer(module, OptimConfig(lr=5e-4, weight_decay=0.2, warmup_steps=20), total)

    def step(batch):
        loss = module.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()  # the logit scale is clamped in the objective's forward
        return loss.detach()
    return step


def open_clip_trainer(model, total):
    from open_clip.loss import ClipLoss
    from open_clip_reference import optimizer_for

    opt = optimizer_for(model, 5e-4, 0.2)
    sched = schedule(opt, total)
    loss_fn = ClipLoss()

    def step(batch):
        img, txt, scale = model(batch["image"], batch["text"])
        loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.detach()
    return step


def autocast(args):
    if args.precision == "bf16":
        return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
    return torch.autocast(args.device.split(":")[0], enabled=False)


def timed(fn, batch, args) -> float:
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast(args):
        fn(batch)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def batches(data, device):
    while True:
        for b in data.train_dataloader():
            b = data.on_before_batch_transfer(b, 0)
            yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}


def memory_probe(which: str, args) -> float:
    """Peak memory of ``which`` training for a few steps alone, in a fresh process (MB)."""
    cmd = [sys.executable, __file__, "--probe", which, "--batch-size", str(args.batch_size), "--device", args.device,
           "--precision", args.precision]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def probe(args) -> None:
    """Peak memory above the process's baseline (imports, data pipeline) while one library's
    model trains 4 steps."""
    import open_clip  # noqa: F401 - imported before the baseline, like vlp's modules

    from vlp.cli import run_cli  # noqa: F401
    from vlp.data.datamodule import VLPDataModule

    data = VLPDataModule(batch_size=args.batch_size, num_workers=2, image_size=64, context_length=16, seed=args.seed)
    it = batches(data, args.device)
    first = next(it)
    base = vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step = vlp_trainer(build_vlp(args)[0], 10) if args.probe == "vlp" else open_clip_trainer(build_open_clip(args), 10)
    for batch in [first, next(it), next(it), next(it)]:
        with autocast(args):
            step(batch)
    if args.device.startswith("cuda"):
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print(vm("VmHWM") - base)


def vm(field: str) -> float:
    """A /proc/self/status memory field in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def eval_check(oc_model, data, args) -> dict:
    """vlp's zero-shot classifier and accuracy on an open_clip model vs open_clip's own."""
    import open_clip

    from vlp.eval.features import extract_features
    from vlp.eval.tasks import load_task
    from vlp.eval.zeroshot import zeroshot_weights

    task = load_task("emoji_google_test_category")
    enc = Encoders(oc_model).eval()
    eval_data = data.eval_data(0)
    ours = zeroshot_weights(enc, eval_data, task.classnames, task.templates).cpu()
    with torch.no_grad():
        theirs = open_clip.build_zero_shot_classifier(oc_model, eval_data.tokenizer, task.classnames,
                                                      list(task.templates),
                                                      num_classes_per_batch=3, device=args.device).cpu().T
    feats = extract_features(enc, task.shards, eval_data, label_field=task.label_field)
    y = torch.tensor([task.classnames.index(x) for x in feats.labels])
    acc = lambda w: (feats.image @ w.T).argmax(1).eq(y).float().mean().item()  # noqa: E731
    return {"max_abs_classifier_diff": (ours - theirs).abs().max().item(), "vlp_top1": acc(ours),
            "open_clip_top1": acc(theirs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=330)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load-open-clip", help="an open_clip state dict of this config: run only the eval check")
    ap.add_argument("--probe", choices=["vlp", "open_clip"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(args)

    from vlp.eval.tasks import load_task

    module, data = build_vlp(args)
    oc = build_open_clip(args)
    if args.load_open_clip:
        oc.load_state_dict(torch.load(args.load_open_clip, map_location=args.device))
        print(json.dumps(eval_check(oc, data, args), indent=1))
        return
    params = {"vlp": sum(p.numel() for p in module.parameters()), "open_clip": sum(p.numel() for p in oc.parameters())}
    steps = {"vlp": vlp_trainer(module, args.steps), "open_clip": open_clip_trainer(oc, args.steps)}
    times = {"vlp": [], "open_clip": []}
    it = batches(data, args.device)
    start = time.perf_counter()
    for i in range(args.steps):
        batch = next(it)
        order = ["vlp", "open_clip"] if i % 2 == 0 else ["open_clip", "vlp"]
        for name in order:
            t = timed(steps[name], batch, args)
            if i >= 5:
                times[name].append(t)
    wall = time.perf_counter() - start
    med = {k: statistics.median(v) for k, v in times.items()}
    sps = {k: args.batch_size / v for k, v in med.items()}
    eval_data = data.eval_data(0)
    acc = {"vlp": {t: load_task(t).run(module, eval_data)["metrics"] for t in TASKS},
           "open_clip": {t: load_task(t).run(Encoders(oc), eval_data)["metrics"] for t in TASKS}}
    mem = {k: memory_probe(k, args) for k in ("vlp", "open_clip")}
    check = eval_check(oc, data, args)
    import open_clip

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.machine()} CPU"
    lines = [
        f"\n## {time.strftime('%Y-%m-%d')}, {dev}, torch {torch.__version__}, open_clip {open_clip.__version__}, "
        f"threads {torch.get_num_threads()}",
        "",
        f"`python benchmarks/vs_open_clip.py --steps {args.steps} --batch-size {args.batch_size} --device "
        f"{args.device} --precision {args.precision}` ({wall:.0f} s for both, alternating)",
        "",
        "| | params | median step ms | samples/s | peak memory MB | " + " | ".join(f"{t.split('_')[1]} {m}" for t, m in SHOWN)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(SHOWN),
    ]
    for k in ("vlp", "open_clip"):
        cells = [k, f"{params[k] / 1e6:.2f} M", f"{1000 * med[k]:.1f}", f"{sps[k]:.1f}", f"{mem[k]:.0f}"]
        cells += [f"{100 * acc[k][t][m]:.1f}%" for t, m in SHOWN]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Throughput ratio vlp / open_clip: **{sps['vlp'] / sps['open_clip']:.2f}**; memory ratio "
              f"{mem['vlp'] / max(mem['open_clip'], 1e-9):.2f}.",
              f"Eval check on the trained open_clip model: vlp's zero-shot classifier vs "
              f"open_clip.build_zero_shot_classifier max |diff| {check['max_abs_classifier_diff']:.2e}, top1 "
              f"{100 * check['vlp_top1']:.1f}% vs {100 * check['open_clip_top1']:.1f}%."]
    append_result("vs_open_clip", "# vlp vs open_clip: same architecture, data, precision and optimiser\n",
                  "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

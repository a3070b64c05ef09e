"""CoCa's default run: caption samples, caption metrics, and zero-shot classification scored by
the contrastive embeddings and by the captioning decoder, side by side.

    python benchmarks/coca_report.py [--recipe coca_tiny] [--examples 8] [extra vlp fit overrides ...]

Runs `vlp fit --recipe coca_tiny` (its default schedule) in a subprocess, then evaluates the
final checkpoint in-process: captioning of twitter train (seen concepts, new style) and google
test (unseen concepts) with greedy and beam search, and the category zero-shot tasks with both
scorers (the decoder one: CapPa's class-name likelihood). Writes
benchmarks/results/coca_report.md (the command, the numbers and a few captions next to their
references). The wall time is end to end and only counts on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

from report import append_result

ZEROSHOT = ["emoji_google_test_category", "emoji_google_test_category_decoder", "emoji_twitter_test_category",
            "emoji_twitter_test_category_decoder"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="coca_tiny")
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--ckpt", help="skip training: evaluate this checkpoint")
    args, extra = ap.parse_known_args()
    import torch

    from vlp.eval.captioning import Captioning
    from vlp.inference import load
    from vlp.eval.tasks import load_task

    work = tempfile.mkdtemp(prefix="vlp-coca-")
    seconds = None
    if args.ckpt:
        ckpt = args.ckpt
    else:
        cmd = [sys.executable, "-m", "vlp.cli", "fit", "--recipe", args.recipe, "--trainer.enable_progress_bar",
               "false", "--trainer.default_root_dir", work, *extra]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
        if out.returncode:
            sys.exit(f"vlp fit failed:\n{out.stderr[-3000:]}")
        ckpt = re.search(r"^checkpoint: (.*)$", out.stdout, re.M).group(1)
    loaded = load(ckpt)
    module, data, info = loaded.module, loaded.data, loaded.info
    rows, samples = [], []
    for shards, name in (("builtin:emoji/twitter/train-*.tar", "twitter train (seen concepts, new style)"),
                         ("builtin:emoji/google/test-*.tar", "google test (unseen concepts)")):
        for strategy in ("greedy", "beam"):
            task = Captioning(shards, references="labels.en", strategy=strategy, num_beams=4,
                              examples=args.examples, name=f"{name}, {strategy}")
            r = task.run(module, data, batch_size=128)
            rows.append((task.name, r["metrics"], r["seconds"], r["num_samples"]))
            if strategy == "greedy":
                samples.append((name, r["details"]["examples"]))
    zs = {t: load_task(t).run(module, data, batch_size=128) for t in ZEROSHOT}
    # zero-shot over concept names (the English label of each google-test image, 385 classes):
    # names like the training captions, where the decoder's likelihood has something to say
    from vlp.eval.zeroshot import ZeroShotClassification

    for scorer in ("contrastive", "decoder"):
        task = ZeroShotClassification("builtin:emoji/google/test-*.tar", "labels.en", templates="name", scorer=scorer,
                                      name="emoji_google_test_concept_names" + ("_decoder" if scorer == "decoder" else ""))
        zs[task.name] = task.run(module, data, batch_size=128)
    command = f"python benchmarks/coca_report.py --recipe {args.recipe}" + (" " + " ".join(extra) if extra else "")
    lines = [f"\n## {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores ({platform.machine()}), "
             f"torch {torch.__version__}", "", f"`{command}`" + (f" (checkpoint {ckpt})" if args.ckpt else ""), ""]
    if seconds is not None:
        lines += [f"Training run end to end: {seconds:.0f} s, {info['global_step']} steps.", ""]
    lines += ["| captioning | samples | CIDEr-D | BLEU-4 | exact match | seconds |", "|---|---|---|---|---|---|"]
    for name, m, s, n in rows:
        lines.append(f"| {name} | {n} | {m['cider']:.3f} | {m['bleu4']:.3f} | {100 * m['exact_match']:.1f}% | {s:.0f} |")
    lines += ["", "| zero-shot (category: 9 classes, `emoji` templates; concept names: 385 classes, the name alone) "
              "| scorer | top1 | top5 | mean per-class recall | seconds |",
              "|---|---|---|---|---|---|"]
    for t, r in zs.items():
        scorer = "decoder (CapPa)" if t.endswith("_decoder") else "contrastive"
        lines.append(f"| {t.removesuffix('_decoder')} | {scorer} | {100 * r['metrics']['top1']:.1f}% | "
                     f"{100 * r['metrics'].get('top5', float('nan')):.1f}% | "
                     f"{100 * r['metrics']['mean_per_class_recall']:.1f}% | {r['seconds']:.0f} |")
    for name, examples in samples:
        lines += ["", f"Greedy captions, {name} (first {len(examples)} samples):", "",
                  "| key | caption | reference |", "|---|---|---|"]
        lines += [f"| {e['key']} | {e['caption']} | {'; '.join(e['references'])} |" for e in examples]
    append_result("coca_report", "# CoCa: captions, caption metrics, zero-shot by embeddings and by the decoder\n",
                  "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({"ckpt": ckpt}))


if __name__ == "__main__":
    main()

"""Train open_clip's own CLIP on the built-in emoji data with vlp's data pipeline and
evaluate it with vlp's tasks: the reference that clip_tiny is judged against.

    pip install -e '.[bench]'
    python benchmarks/open_clip_reference.py [--epochs 10 --lr 5e-4 --warmup 10000 --batch-size 64]

Model: open_clip.CLIP with the issue's small config (ViT 6 x 256, patch 8, 64 px;
text 6 x 256, context 32; embed 256), open_clip's SimpleTokenizer (its bundled
BPE), open_clip's ClipLoss, AdamW with open_clip's weight-decay exclusion and its
cosine_lr schedule (open_clip's defaults: wd 0.2, betas 0.9/0.98, eps 1e-6,
warmup 10000). Appends a row to benchmarks/results/open_clip_reference.md.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from report import append_result

SMALL = dict(
    embed_dim=256,
    vision_cfg=dict(image_size=64, layers=6, width=256, patch_size=8, head_width=64),
    text_cfg=dict(context_length=32, vocab_size=49408, width=256, heads=4, layers=6),
)
TASKS = ["emoji_google_test_retrieval", "emoji_twitter_test_retrieval", "emoji_google_test_category"]


class OpenClipTokenizer:
    """open_clip's SimpleTokenizer behind vlp's tokenizer interface."""

    def __init__(self, context_length: int):
        from open_clip.tokenizer import SimpleTokenizer

        self.tok = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.vocab_size = self.tok.vocab_size
        self.pad_id = 0

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tok(texts)


class Encoders(torch.nn.Module):
    """``embed(name, x)`` (normalised) of an open_clip model, as vlp's eval expects: ``image``
    encodes images, ``text`` token ids; ``similarity_scale`` its learnt temperature."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def device(self):
        return next(self.model.parameters()).device

    def embed(self, name: str, x):
        encode = {"image": self.model.encode_image, "text": self.model.encode_text}[name]
        return F.normalize(encode(x), dim=-1)

    def similarity_scale(self, a: str = "image", b: str = "text") -> float:
        return float(self.model.logit_scale.detach().exp())


def build(seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**SMALL)


def optimizer_for(model, lr: float, wd: float):
    """open_clip_train.main's parameter groups and AdamW settings."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    return torch.optim.AdamW([{"params": gain_or_bias, "weight_decay": 0.0}, {"params": rest, "weight_decay": wd}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--wd", type=float, default=0.2)
    parser.add_argument("--warmup", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from lightning.pytorch import seed_everything
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr

    from vlp.data.datamodule import VLPDataModule
    from vlp.eval.tasks import load_task

    seed_everything(args.seed, workers=True)
    start = time.perf_counter()
    model = build(args.seed)
    data = VLPDataModule(batch_size=args.batch_size, num_workers=args.workers, image_size=64,
                         tokenizer=OpenClipTokenizer(32))
    loader = data.train_dataloader()
    steps = len(loader) * args.epochs
    opt = optimizer_for(model, args.lr, args.wd)
    sched = cosine_lr(opt, args.lr, args.warmup, steps)
    loss_fn = ClipLoss()
    step, train_start = 0, time.perf_counter()
    for _ in range(args.epochs):
        for batch in loader:
            sched(step)
            img, txt, scale = model(batch["image"], batch["text"])
            loss = loss_fn(img, txt, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)
            step += 1
    train_s = time.perf_counter() - train_start
    results = {t: load_task(t).run(Encoders(model), data.eval_data(0))["metrics"] for t in TASKS}
    total_s = time.perf_counter() - start
    row = [f"{args.epochs}", f"{args.lr:g}", f"{args.warmup}", f"{args.batch_size}", f"{step}", f"{train_s:.0f}",
           f"{total_s:.0f}"]
    row += [f"{100 * results[TASKS[0]]['image_to_text_R@1']:.1f}%", f"{100 * results[TASKS[0]]['image_to_text_R@5']:.1f}%",
            f"{100 * results[TASKS[1]]['image_to_text_R@1']:.1f}%", f"{100 * results[TASKS[1]]['image_to_text_R@5']:.1f}%",
            f"{100 * results[TASKS[2]]['top1']:.1f}%"]
    append_result("open_clip_reference", "| epochs | lr | warmup | batch | steps | train s | total s | google R@1 "
                  "| google R@5 | twitter test R@1 | twitter test R@5 | category top1 |\n|" + " --- |" * 12 + "\n",
                  "| " + " | ".join(row) + f" |  <!-- {os.cpu_count()} cores, torch {torch.__version__} -->")
    print(" | ".join(row))


if __name__ == "__main__":
    main()

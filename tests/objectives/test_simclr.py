"""SLIP's SimCLR branch: NT-Xent and its accuracy against hand-written references, ranks, views in
the data."""

import math
import os
import sys

import pytest
import torch

from vlp.data.fields import Views
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlp.objectives.simclr import SimCLRLoss, nt_xent, slip_mlp


def reference_nt_xent(a, b, t):
    """float64 loops: view a_i's positive is b_i; its negatives every b_j and a_j (j != i)."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            pos = math.exp(float(x[i] @ y[i]) / t)
            denom = sum(math.exp(float(x[i] @ y[j]) / t) for j in range(n))
            denom += sum(math.exp(float(x[i] @ x[j]) / t) for j in range(n) if j != i)
            total += -math.log(pos / denom)
    return total / (2 * n)


def reference_accuracy(a, b):
    """float64 loops: the share of views a_i whose most similar candidate (every b_j, every a_j
    with j != i) is their positive b_i."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    hits = 0
    for i in range(n):
        candidates = [(float(a[i] @ b[j]), "b", j) for j in range(n)]
        candidates += [(float(a[i] @ a[j]), "a", j) for j in range(n) if j != i]
        hits += max(candidates)[1:] == ("b", i)
    return hits / n


def _views(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_nt_xent_matches_hand_computed_reference_and_gradients():
    a, b = _views()
    loss, metrics = nt_xent(a, b, 0.1)
    assert math.isclose(loss.item(), reference_nt_xent(a, b, 0.1), rel_tol=1e-5)
    assert metrics["acc"].item() == pytest.approx(reference_accuracy(a, b)) and reference_accuracy(a, b) == 2 / 6
    # views b_0..b_2 moved next to their a: those three become hits
    near = b.clone()
    near[:3] = F.normalize(a[:3] + 0.1 * b[:3], dim=-1)
    assert nt_xent(a, near, 0.1)[1]["acc"].item() == pytest.approx(reference_accuracy(a, near))
    assert reference_accuracy(a, near) == 4 / 6
    a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
    a32, b32 = a.clone().requires_grad_(), b.clone().requires_grad_()
    nt_xent(a32, b32, 0.5)[0].backward()
    mask = torch.eye(6, dtype=torch.float64) * 1e9
    la = F.cross_entropy(torch.cat([a64 @ b64.T, a64 @ a64.T - mask * 0.5], 1) / 0.5, torch.arange(6))
    lb = F.cross_entropy(torch.cat([b64 @ a64.T, b64 @ b64.T - mask * 0.5], 1) / 0.5, torch.arange(6))
    ((la + lb) / 2).backward()
    assert torch.allclose(a32.grad.double(), a64.grad, atol=1e-5) and torch.allclose(b32.grad.double(), b64.grad, atol=1e-5)


def test_projector_is_slips_three_layer_mlp():
    mlp = slip_mlp(64, 4096, 256)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert mlp[0].in_features == 64 and mlp[-1].out_features == 256


def _rank_main(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    a, b = _views(8)
    per = 8 // world
    a, b = a[rank * per:(rank + 1) * per].requires_grad_(), b[rank * per:(rank + 1) * per].requires_grad_()
    loss, _ = nt_xent(a, b, 0.2)
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    grads_a = [torch.zeros_like(a) for _ in range(world)]
    dist.all_gather(grads_a, a.grad)
    if rank == 0:
        torch.save({"loss": torch.stack(losses).mean(), "grad_a": torch.cat(grads_a)}, os.path.join(out_dir, "r.pt"))
    dist.barrier()
    dist.destroy_process_group()
    # leave without C++ static destructors: gloo's threads otherwise abort the process at exit
    # now and then ("terminate called without an active exception"), after the work is saved
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_gloo_ranks_give_the_single_process_nt_xent(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "r.pt")
    a, b = _views(8)
    a.requires_grad_()
    loss, _ = nt_xent(a, b, 0.2)
    loss.backward()
    assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
    # each rank's gradient is that of its own loss; DDP averages over ranks: world x the full-batch gradient
    assert torch.allclose(got["grad_a"] / 2, a.grad, atol=1e-6)


def test_views_are_made_only_when_asked_and_reach_the_objective(tiny_module):
    from vlp.data.datamodule import VLPDataModule

    plain = VLPDataModule(batch_size=4, num_workers=0, image_size=32, context_length=16, seed=0, train_num_samples=8)
    assert "views" not in next(iter(plain.train_dataloader())) and "views" not in plain.batch_fields()
    dm = VLPDataModule(batch_size=4, num_workers=0, image_size=32, context_length=16, seed=0, train_num_samples=8,
                       fields={"views": Views()})
    batch = next(iter(dm.train_dataloader()))
    assert batch["views"].shape == (4, 2, 3, 32, 32) and "views" in dm.batch_fields()
    assert not torch.equal(batch["views"][:, 0], batch["views"][:, 1])  # two different augmentations

    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss

    module = VLPModule(dict(tiny_module.towers), [ContrastiveLoss(), SimCLRLoss(weight=0.5, mlp_dim=32, out_dim=16)],
                       share={"views": "image"})
    assert module.reads == {"image": {"pooled"}, "text": {"pooled"}, "views": {"features"}}
    logs = {}
    module.log = lambda name, value, **kw: logs.__setitem__(name, float(value))
    batch.pop("_state")
    total = module.training_step(batch, 0)
    assert math.isclose(total.item(), logs["train/contrastive_loss"] + 0.5 * logs["train/simclr_loss"], rel_tol=1e-5)
    total.backward()
    assert module.objectives[1].mlp[0].weight.grad is not None
    assert module.towers.image.trunk.patch_embed.proj.weight.grad.abs().sum() > 0


def test_flip_and_slip_combine_in_one_recipe(tmp_path):
    from tests.conftest import TINY
    from vlp.cli import run_cli

    cli = run_cli(["fit", "--recipe", "slip_tiny", *TINY, "--model.towers.image.mask_ratio", "0.5",
                   "--trainer.max_steps", "2", "--trainer.logger", "false", "--trainer.callbacks", "[]",
                   "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                   "--trainer.default_root_dir", str(tmp_path)])
    assert cli.model.towers.image.mask_ratio == 0.5 and cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/contrastive_loss"]) and torch.isfinite(metrics["train/simclr_loss"])

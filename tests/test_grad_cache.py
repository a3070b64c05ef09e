"""The gradient cache (vlp.step.GradCacheStep): the full-batch gradients of every parameter,
random state replayed, batch-norm statistics updated once, refused where it cannot work."""

import pytest
import torch
import torch.multiprocessing as mp

from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.step import GradCacheStep

TOK = TextTokenizer(context_length=16)


def tiny(objectives=None, dropout=0.0, mask_ratio=0.0, seed=0, share=None):
    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss
    from vlp.towers import TextTransformer, TimmImageTower

    torch.manual_seed(seed)
    image = TimmImageTower("vit_tiny_patch16_224", embed_dim=64, image_size=32, mask_ratio=mask_ratio,
                           model_kwargs=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2, proj_drop_rate=dropout,
                                             attn_drop_rate=dropout, drop_path_rate=dropout))
    text = TextTransformer(context_length=16, width=64, layers=2, heads=2, embed_dim=64)
    module = VLPModule({"image": image, "text": text}, objectives or [ContrastiveLoss()], share=share)
    module.log = lambda *a, **k: None
    return module.train()


def batch_of(n, seed=1, views=False):
    g = torch.Generator().manual_seed(seed)
    out = {"image": torch.randn(n, 3, 32, 32, generator=g), "text": TOK([f"emoji number {i}" for i in range(n)])}
    if views:
        out["views"] = torch.randn(n, 2, 3, 32, 32, generator=g)
    return out


def chunked_reference(module, batch, chunk):
    """The full-batch loss built chunk by chunk with a graph (the same random draws as the
    cache's first pass), one backward: the gradients the cache must reproduce."""
    fields = {module.inputs[n] for n in module.reads}
    n = batch["image"].shape[0]
    outs = [module({k: (v[i:i + chunk] if k in fields else v) for k, v in batch.items()}) for i in range(0, n, chunk)]
    from vlp.towers.output import TowerOutput

    joined = {name: TowerOutput(pooled=torch.cat([o[name].pooled for o in outs]),
                                features=torch.cat([o[name].features for o in outs])) for name in outs[0]}
    module.objective_loss(joined, batch).backward()
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def cached(module, batch, chunk):
    loss = GradCacheStep(chunk).gradients(module, batch)
    assert loss is not None and torch.isfinite(loss)
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def assert_same(a, b, tol=1e-5):
    """Every gradient within ``tol`` of the other, relative to its largest entry (at least 1):
    fp32 sums taken in another order differ at the last digits."""
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        scale = max(1.0, float(b[k].abs().max()))
        assert (a[k] - b[k]).abs().max() <= tol * scale, (k, (a[k] - b[k]).abs().max(), scale)


def test_cache_equals_the_full_batch_step_without_randomness():
    batch = batch_of(12)
    plain = tiny()
    plain.objective_loss(plain(batch), batch).backward()  # one forward over the whole batch
    expected = {k: p.grad.clone() for k, p in plain.named_parameters() if p.grad is not None}
    assert_same(cached(tiny(), batch, 5), expected)  # chunks of 5, 5, 2


def test_cache_replays_dropout_drop_path_and_flip_masks():
    batch = batch_of(12)
    torch.manual_seed(7)
    expected = chunked_reference(tiny(dropout=0.2, mask_ratio=0.5), batch, 4)
    after_reference = torch.rand(3)
    torch.manual_seed(7)
    module = tiny(dropout=0.2, mask_ratio=0.5)
    got = cached(module, batch, 4)
    assert_same(got, expected)
    assert torch.equal(torch.rand(3), after_reference)  # the random stream continues as after one pass
    # the replay matters: drawing new numbers in the second pass gives other gradients
    torch.manual_seed(7)
    other = tiny(dropout=0.2, mask_ratio=0.5)
    step = GradCacheStep(4)
    import vlp.step as step_module

    real = step_module.set_rng_states
    step_module.set_rng_states = lambda state: None
    try:
        step.gradients(other, batch)
    finally:
        step_module.set_rng_states = real
    drift = max((p.grad - got[k]).abs().max() for k, p in other.named_parameters() if p.grad is not None)
    assert drift > 1e-3


@pytest.mark.parametrize("objective", ["siglip", "slip"])
def test_cache_for_siglip_and_slip(objective):
    from vlp.objectives import ContrastiveLoss, SigmoidLoss, SimCLRLoss

    make = {"siglip": lambda: [SigmoidLoss()],
            "slip": lambda: [ContrastiveLoss(), SimCLRLoss(mlp_dim=32, out_dim=16)]}[objective]
    batch = batch_of(10, views=objective == "slip")
    share = {"views": "image"} if objective == "slip" else None
    plain = tiny(make(), share=share)
    plain.objective_loss(plain(batch), batch).backward()
    expected = {k: p.grad.clone() for k, p in plain.named_parameters() if p.grad is not None}
    module = tiny(make(), share=share)
    got = cached(module, batch, 3)
    assert_same(got, expected)
    if objective == "slip":  # SimCLR's head (batch norm inside) ran once, on the whole batch
        for a, b in zip(plain.buffers(), module.buffers()):
            assert torch.allclose(a, b)


def test_batch_norm_statistics_update_once_per_sample():
    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss
    from vlp.towers import TextTransformer, TimmImageTower

    torch.manual_seed(0)
    image = TimmImageTower("resnet18", embed_dim=32, model_kwargs={"num_classes": 0}, freeze_bn_stats=False)
    text = TextTransformer(context_length=16, width=32, layers=1, heads=2, embed_dim=32)
    module = VLPModule({"image": image, "text": text}, [ContrastiveLoss()]).train()
    module.log = lambda *a, **k: None
    batch = batch_of(8)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    expected = [m.running_mean.clone() for m in norms]
    reference = VLPModule({"image": image, "text": text}, [ContrastiveLoss()]).train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():  # the first pass alone: each chunk through the tower once
        for i in range(0, 8, 4):
            reference.run_tower("image", batch["image"][i:i + 4], False)
    expected = [m.running_mean.clone() for m in norms]
    tracked = [int(m.num_batches_tracked) for m in norms]
    module.load_state_dict(state)
    GradCacheStep(4).gradients(module, batch)
    assert all(torch.allclose(m.running_mean, e) for m, e in zip(norms, expected))
    assert [int(m.num_batches_tracked) for m in norms] == tracked


def test_objectives_that_read_tokens_are_refused():
    from tests.test_generation import tiny_coca
    from vlp.module import VLPModule

    coca = tiny_coca()
    with pytest.raises(VLPError, match=r"CaptioningLoss\) reads image.queries, text.tokens: outputs it does not keep"
                                       r".*plain step"):
        VLPModule(dict(coca.towers), list(coca.objectives), step=GradCacheStep(4), heads=dict(coca.heads))
    with pytest.raises(VLPError, match="chunk_size"):
        GradCacheStep(0)


def _rank(rank, world, init_file, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        full = batch_of(12)
        mine = {k: v[rank::world] for k, v in full.items()}  # this rank's 6 samples
        plain = tiny()
        plain.objective_loss(plain(mine), mine).backward()
        for p in plain.parameters():  # DDP's average
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
        expected = {k: p.grad for k, p in plain.named_parameters() if p.grad is not None}
        got = cached(tiny(), mine, 4)
        torch.save({"expected": expected, "got": got}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_cache_on_two_processes_equals_the_ddp_step(tmp_path):
    mp.start_processes(_rank, args=(2, tmp_path / "init", tmp_path), nprocs=2, start_method="spawn")
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for r in results:
        assert_same(r["got"], r["expected"])
    assert_same(results[0]["got"], results[1]["got"], tol=0)  # one synchronised gradient


def _fit(tmp, *extra):
    from tests.conftest import TINY
    from vlp.cli import run_cli

    cli = run_cli(["fit", "--recipe", "clip_tiny", *TINY, "--data.batch_size", "12", "--trainer.max_steps", "3",
                   "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.gradient_clip_val", "0.05",
                   "--trainer.default_root_dir", str(tmp), "--seed_everything", "3",
                   "--model.optim.lr", "5e-4",  # pinned: the clipping check below needs steps this large
                   *extra])
    return cli


def test_a_recipe_trains_with_the_cache_as_with_the_plain_step(tmp_path):
    """Three optimiser steps of clip_tiny (gradient clipping on, taken over from the trainer
    setting): the same parameters, learning-rate schedule and step count as the plain step."""
    plain = _fit(tmp_path / "plain")
    cache = _fit(tmp_path / "cache", "--model.step", "vlp.step.GradCacheStep", "--model.step.chunk_size", "5")
    assert cache.model.automatic_optimization is False and cache.model.step.gradient_clip_val == 0.05
    assert cache.trainer.global_step == plain.trainer.global_step == 3
    lr = [t.optimizers[0].param_groups[0]["lr"] for t in (plain.trainer, cache.trainer)]
    assert lr[0] == lr[1]
    a, b = plain.model.state_dict(), cache.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5), (k, (a[k] - b[k]).abs().max())
    first = _fit(tmp_path / "again", "--model.step", "vlp.step.GradCacheStep", "--model.step.chunk_size", "5",
                 "--trainer.gradient_clip_val", "null")
    # without clipping the run differs (clipping was active in the runs above)
    diff = max((first.model.state_dict()[k] - b[k]).abs().max() for k in b if b[k].is_floating_point())
    assert diff > 1e-4


@pytest.mark.slow
def test_fit_under_ddp_with_the_cache_gives_the_plain_ddp_losses(tmp_path):
    from tests.processes import fit_two_processes

    clip = ["--trainer.gradient_clip_val", "0.05"]
    plain = fit_two_processes(tmp_path / "plain", *clip)
    cache = fit_two_processes(tmp_path / "cache", *clip, "--model.step", "vlp.step.GradCacheStep",
                              "--model.step.chunk_size", "3")
    assert sorted(plain) == sorted(cache) == [0, 1, 2, 3]
    for step in plain:  # chunks of 3 of each rank's 8: the same sums in another order
        assert abs(plain[step] - cache[step]) <= 1e-5 * abs(plain[step]), (step, plain[step], cache[step])
    assert len(set(plain.values())) == 4  # the model moved


def test_cache_skips_a_tower_without_trainable_parameters():
    """LiT with ``lock: true, head: keep``: the image tower's outputs need no gradient. The
    second pass must not back-propagate into them (torch refused: "element 0 of tensors does
    not require grad"), and the text tower still gets the full-batch gradients."""
    batch = batch_of(12)
    plain, cache = tiny(), tiny()
    for module in (plain, cache):
        module.towers.image.requires_grad_(False)
    plain.objective_loss(plain(batch), batch).backward()
    expected = {k: p.grad.clone() for k, p in plain.named_parameters() if p.grad is not None}
    assert not any(k.startswith("towers.image.") for k in expected)
    assert_same(cached(cache, batch, 5), expected)

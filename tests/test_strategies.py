"""FSDP2 (``fully_shard`` per block, Lightning's ModelParallelStrategy) on 2 CPU processes: the
pooled-only pass goes through the blocks' own calls, so it works on sharded blocks, and a fit
gives the DDP run's losses."""

import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.processes import fit_two_processes

VIT = dict(patch_size=8, embed_dim=64, depth=2, num_heads=2)


def _towers():
    from vlp.towers import TextTransformer, TimmImageTower

    torch.manual_seed(0)
    return torch.nn.ModuleDict({
        "image": TimmImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, model_kwargs=VIT),
        "text": TextTransformer(vocab_size=50, context_length=8, width=32, layers=2, heads=2, embed_dim=32),
    })


def _inputs():
    g = torch.Generator().manual_seed(1)
    text = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0], [1, 7, 7, 7, 7, 7, 7, 2]])
    return torch.randn(2, 3, 32, 32, generator=g), text


def _rank_main(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from vlp.strategies import shard_fsdp2

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    towers = _towers()
    shard_fsdp2(towers, torch.nn.ModuleList(), init_device_mesh("cpu", (world,)))
    image, text = _inputs()
    fast = {"image": towers["image"](image, tokens=False), "text": towers["text"](text, tokens=False)}
    loss = sum((out.pooled * torch.linspace(-1, 1, out.pooled.numel()).view_as(out.pooled)).sum()
               for out in fast.values())
    loss.backward()
    grads = {n: p.grad.full_tensor() for n, p in towers.named_parameters()}  # DTensor shards -> whole
    if rank == 0:
        torch.save({"pooled": {k: v.pooled.detach() for k, v in fast.items()}, "grads": grads,
                    "fast_path": towers["image"]._class_token_path()}, os.path.join(out_dir, "r.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no C++ static destructors: gloo's threads may abort the process at exit


def test_pooled_pass_on_fsdp2_sharded_blocks_equals_the_unsharded_towers(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "r.pt", weights_only=False)
    assert got["fast_path"]  # the sharded ViT still takes the class-token-only last block
    towers = _towers()
    image, text = _inputs()
    ref = {"image": towers["image"](image), "text": towers["text"](text)}  # the full passes
    loss = sum((out.pooled * torch.linspace(-1, 1, out.pooled.numel()).view_as(out.pooled)).sum()
               for out in ref.values())
    loss.backward()
    for name in ref:
        assert torch.allclose(got["pooled"][name], ref[name].pooled, atol=1e-5), name
    for name, p in towers.named_parameters():
        # both ranks ran the same inputs: FSDP2 averages the two equal gradients
        assert torch.allclose(got["grads"][name], p.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
def test_fit_under_fsdp2_gives_the_ddp_losses(tmp_path):
    fsdp2 = ("{class_path: lightning.pytorch.strategies.ModelParallelStrategy, "
             "init_args: {data_parallel_size: 2, tensor_parallel_size: 1}}")
    ddp, sharded = fit_two_processes(tmp_path / "ddp"), fit_two_processes(tmp_path / "fsdp2", strategy=fsdp2)
    assert sorted(ddp) == sorted(sharded) == [0, 1, 2, 3]
    for step in ddp:  # the same sums in another order (sharded all-gathers, reduce-scatter): float32 rounding
        assert abs(ddp[step] - sharded[step]) <= 1e-5 * abs(ddp[step]), (step, ddp[step], sharded[step])

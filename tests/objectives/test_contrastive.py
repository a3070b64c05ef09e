import math
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlp.objectives import ContrastiveLoss, SigmoidLoss
from vlp.towers.output import TowerOutput


def reference_clip_loss(image, text, scale):
    """Hand-written float64 CLIP loss: mean over rows of -log softmax at the diagonal, both ways."""
    image, text = image.double(), text.double()
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(image[i] @ text[j]) for j in range(n)]
        col = [scale * float(text[i] @ image[j]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return total / (2 * n)


def _out(image, text):
    """Tower outputs with these pooled embeddings (the objectives normalise them)."""
    return {"image": TowerOutput(image, image), "text": TowerOutput(text, text)}


def _features(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1))


def test_loss_matches_hand_computed_reference():
    image, text = _features()
    loss_fn = ContrastiveLoss()
    loss, metrics = loss_fn(_out(image, text), {})
    assert math.isclose(loss.item(), reference_clip_loss(image, text, 1 / 0.07), rel_tol=1e-5)
    assert math.isclose(metrics["logit_scale"].item(), 1 / 0.07, rel_tol=1e-6)


def test_gradients_match_reference():
    image, text = _features()
    image.requires_grad_(True)
    text.requires_grad_(True)
    loss_fn = ContrastiveLoss(init_logit_scale=math.log(10.0))
    loss, _ = loss_fn(_out(image, text), {})
    loss.backward()
    img64 = image.detach().double().requires_grad_(True)
    txt64 = text.detach().double().requires_grad_(True)
    scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    logits = scale.exp() * F.normalize(img64, dim=-1) @ F.normalize(txt64, dim=-1).T
    ref = (-(logits.diag()) + logits.logsumexp(1)).mean() / 2 + (-(logits.diag()) + logits.logsumexp(0)).mean() / 2
    ref.backward()
    assert torch.allclose(image.grad.double(), img64.grad, atol=1e-5)
    assert torch.allclose(text.grad.double(), txt64.grad, atol=1e-5)
    assert math.isclose(loss_fn.logit_scale.grad.item(), scale.grad.item(), rel_tol=1e-4)


def test_logit_scale_is_clamped_to_ln_100_in_the_forward_without_editing_the_parameter():
    image, text = _features()
    loss_fn = ContrastiveLoss()
    with torch.no_grad():
        loss_fn.logit_scale.fill_(7.0)
    loss, metrics = loss_fn(_out(image, text), {})
    assert math.isclose(metrics["logit_scale"].item(), 100.0, rel_tol=1e-6)
    assert math.isclose(loss.item(), reference_clip_loss(image, text, 100.0), rel_tol=1e-5)
    loss.backward()
    assert loss_fn.logit_scale.item() == 7.0 and loss_fn.logit_scale.grad.item() == 0.0


def test_label_smoothing_matches_torch():
    image, text = _features()
    loss, _ = ContrastiveLoss(label_smoothing=0.1)(_out(image, text), {})
    logits = (1 / 0.07) * image @ text.T
    labels = torch.arange(6)
    ref = (F.cross_entropy(logits, labels, label_smoothing=0.1) + F.cross_entropy(logits.T, labels, label_smoothing=0.1)) / 2
    assert torch.allclose(loss, ref, atol=1e-5)


class _Towers(torch.nn.Module):
    """Stand-in towers with fixed seeded weights."""

    def __init__(self, kind="clip"):
        super().__init__()
        torch.manual_seed(0)
        self.img = torch.nn.Linear(7, 5)
        self.txt = torch.nn.Linear(3, 5)
        self.loss = (ContrastiveLoss(init_logit_scale=math.log(5.0)) if kind == "clip"
                     else SigmoidLoss(init_logit_scale=math.log(5.0), init_logit_bias=-2.0))

    def forward(self, x_img, x_txt):
        out = _out(self.img(x_img), self.txt(x_txt))
        return self.loss(out, {})[0]


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 7, generator=g), torch.randn(8, 3, generator=g)


def _rank_main(rank, world, init_file, out_dir, kind):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = DDP(_Towers(kind))
    x_img, x_txt = _data()
    per = x_img.shape[0] // world
    loss = model(x_img[rank * per:(rank + 1) * per], x_txt[rank * per:(rank + 1) * per])
    loss.backward()  # DDP averages the gradients over ranks
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save({"loss": torch.stack(losses).mean(),
                    "grads": {n: p.grad for n, p in model.module.named_parameters()}}, os.path.join(out_dir, "r.pt"))
    # tear down in order: the DDP reducer before the group, both ranks past their work
    del model, loss
    dist.barrier()
    dist.destroy_process_group()
    # leave without C++ static destructors: gloo's threads otherwise abort the process at exit
    # now and then ("terminate called without an active exception"), after the work is saved
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("kind", ["clip", "sigmoid"])
def test_two_gloo_ranks_give_the_single_process_loss_and_gradients(tmp_path, kind):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path), kind), nprocs=2, join=True)
    got = torch.load(tmp_path / "r.pt")
    model = _Towers(kind)
    loss = model(*_data())
    loss.backward()
    assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(got["grads"][name], p.grad, atol=1e-6), name


def reference_sigmoid_loss(image, text, scale, bias):
    """Hand-written float64 SigLIP loss: -1/n sum_i sum_j log sigmoid(label_ij (scale <i, j> + bias))."""
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = scale * float(image[i].double() @ text[j].double()) + bias
            label = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-label * z))  # -log sigmoid(label * z)
    return total / n


def test_sigmoid_loss_matches_hand_computed_reference_and_defaults():
    image, text = _features(n=5)
    loss_fn = SigmoidLoss()
    assert math.isclose(loss_fn.logit_scale.exp().item(), 10.0, rel_tol=1e-6) and loss_fn.logit_bias.item() == -10.0
    loss, metrics = loss_fn(_out(image, text), {})
    assert math.isclose(loss.item(), reference_sigmoid_loss(image, text, 10.0, -10.0), rel_tol=1e-5)
    loss2, _ = SigmoidLoss(init_logit_scale=math.log(3.0), init_logit_bias=0.5)(
        _out(image, text), {})
    assert math.isclose(loss2.item(), reference_sigmoid_loss(image, text, 3.0, 0.5), rel_tol=1e-5)


def test_sigmoid_loss_gradients_match_reference():
    image, text = _features(n=5)
    image.requires_grad_(True)
    text.requires_grad_(True)
    loss_fn = SigmoidLoss(init_logit_scale=math.log(4.0), init_logit_bias=-1.5)
    loss, _ = loss_fn(_out(image, text), {})
    loss.backward()
    img64 = image.detach().double().requires_grad_(True)
    txt64 = text.detach().double().requires_grad_(True)
    t = torch.tensor(math.log(4.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    z = t.exp() * F.normalize(img64, dim=-1) @ F.normalize(txt64, dim=-1).T + b
    labels = 2 * torch.eye(5, dtype=torch.float64) - 1
    ref = torch.log1p(torch.exp(-labels * z)).sum() / 5
    ref.backward()
    assert torch.allclose(image.grad.double(), img64.grad, atol=1e-5)
    assert torch.allclose(text.grad.double(), txt64.grad, atol=1e-5)
    assert math.isclose(loss_fn.logit_scale.grad.item(), t.grad.item(), rel_tol=1e-4)
    assert math.isclose(loss_fn.logit_bias.grad.item(), b.grad.item(), rel_tol=1e-4)

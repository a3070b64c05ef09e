import math

import pytest
import torch

from vlp.errors import VLPError
from vlp.optim import OptimConfig, build_optimizer, lr_factor, no_decay_names, param_groups


def test_no_weight_decay_on_biases_norms_scalars_and_frozen(tiny_module):
    module = tiny_module
    module.towers.text.token_embedding.weight.requires_grad_(False)
    decay, no_decay = param_groups(module, 0.2)
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    named = dict(module.named_parameters())
    assert id(named["objectives.0.logit_scale"]) in no_decay_ids
    assert id(named["towers.text.ln_final.weight"]) in no_decay_ids
    assert id(named["towers.text.blocks.0.attn.qkv.bias"]) in no_decay_ids
    assert id(named["towers.image.trunk.cls_token"]) in no_decay_ids  # timm's no_weight_decay()
    assert id(named["towers.image.trunk.pos_embed"]) in no_decay_ids
    assert id(named["towers.text.blocks.0.attn.qkv.weight"]) in decay_ids
    assert id(named["towers.text.token_embedding.weight"]) not in decay_ids | no_decay_ids
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0


def test_groups_are_timms_given_the_nested_no_weight_decay_names(tiny_module):
    # timm's grouping, the reference, reads only the top module's no_weight_decay(): alone it
    # would decay the nested ViT's cls_token; given vlp's nested names it groups as vlp does
    from timm.optim import param_groups_weight_decay

    def by_decay(groups):
        return {g["weight_decay"]: [id(p) for p in g["params"]] for g in groups}

    tiny_module.towers.text.token_embedding.weight.requires_grad_(False)
    ours = param_groups(tiny_module, 0.2)
    assert [g["weight_decay"] for g in ours] == [0.2, 0.0]  # the optimiser state order of checkpoints
    names = no_decay_names(tiny_module)
    assert by_decay(ours) == by_decay(param_groups_weight_decay(tiny_module, 0.2, no_weight_decay_list=names))
    cls_token = id(dict(tiny_module.named_parameters())["towers.image.trunk.cls_token"])
    assert cls_token in by_decay(param_groups_weight_decay(tiny_module, 0.2))[0.2]


def test_warmup_then_cosine_matches_open_clip_formula():
    warmup, total = 10, 110
    assert lr_factor(0, warmup, total, "cosine") == 1 / 10
    assert lr_factor(9, warmup, total, "cosine") == 1.0
    assert lr_factor(10, warmup, total, "cosine") == 1.0
    assert math.isclose(lr_factor(60, warmup, total, "cosine"), 0.5)
    assert math.isclose(lr_factor(110, warmup, total, "cosine"), 0.0, abs_tol=1e-12)
    assert lr_factor(50, warmup, total, "constant") == 1.0


def test_rsqrt_and_cooldown_match_big_visions_formula():
    warmup, total, timescale, cooldown = 10, 1000, 100, 200

    def big_vision(step):  # create_learning_rate_schedule(decay_type="rsqrt"), after the warmup
        return min(1.0, (total - step) / cooldown) / math.sqrt(1 + (step - warmup) / timescale)

    for step in (10, 50, 110, 500, 799, 800, 900, 999):
        assert math.isclose(lr_factor(step, warmup, total, "rsqrt", timescale, cooldown), big_vision(step))
    assert math.isclose(lr_factor(110, warmup, total, "rsqrt", timescale), 2 ** -0.5)  # one timescale on
    assert lr_factor(4, warmup, total, "rsqrt", timescale, cooldown) == 5 / 10  # vlp's warmup
    assert lr_factor(999, warmup, total, "constant", cooldown_steps=cooldown) == 1 / 200
    with pytest.raises(VLPError, match="rsqrt_timescale must be >= 1"):
        OptimConfig(rsqrt_timescale=0)


def test_scheduler_drives_the_optimizer_lr(tiny_module):
    opt, sched = build_optimizer(tiny_module, OptimConfig(lr=1e-3, warmup_steps=4), total_steps=20)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [round(x, 6) for x in lrs[:5]] == [0.00025, 0.0005, 0.00075, 0.001, 0.001]
    assert lrs[5] < 1e-3
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert isinstance(opt, torch.optim.AdamW)


def test_fused_adamw_is_the_default_on_cpu_and_matches_foreach(tiny_module):
    import copy

    modules = {True: tiny_module, False: copy.deepcopy(tiny_module)}
    opts = {k: build_optimizer(m, OptimConfig(lr=1e-3, warmup_steps=2, fused=None if k else False), 10)[0]
            for k, m in modules.items()}
    assert opts[True].defaults["fused"] and not opts[False].defaults["fused"]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in tiny_module.parameters()]
        for k, m in modules.items():
            for p, grad in zip(m.parameters(), grads):
                p.grad = grad.clone()
            opts[k].step()
    for a, b in zip(modules[True].parameters(), modules[False].parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)

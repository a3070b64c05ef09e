"""FLIP patch masking and unmasked tuning."""

import pytest
import torch
from lightning.pytorch import Trainer

from vlp.errors import VLPError
from vlp.towers import TimmImageTower
from vlp.towers.masking import PatchMask


def _tower(ratio=0.5, **kw):
    torch.manual_seed(0)
    return TimmImageTower("vit_tiny_patch16_224", embed_dim=64, image_size=32, mask_ratio=ratio,
                          model_kwargs=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2), **kw)


def test_mask_keeps_floor_share_per_sample_and_never_the_class_token():
    mask = PatchMask(0.75, num_prefix_tokens=1).train()
    x = torch.arange(11.0).view(1, 11, 1).expand(6, 11, 3).contiguous()  # token i holds the value i
    torch.manual_seed(3)
    out = mask(x)
    assert out.shape == (6, 1 + 2, 3)  # floor(10 * 0.25) = 2 patches kept
    assert (out[:, 0] == 0).all()  # the class token, first and always there
    kept = [tuple(sorted(row[1:, 0].long().tolist())) for row in out]
    assert all(len(set(k)) == 2 and min(k) >= 1 for k in kept)
    assert len(set(kept)) > 1  # samples are masked differently
    # independent reference: the lowest values of uniform noise, drawn from the same RNG state
    torch.manual_seed(3)
    noise = torch.rand(6, 10)
    expected = [tuple(sorted((noise[i].argsort()[:2] + 1).tolist())) for i in range(6)]
    assert kept == expected
    # and the mask reports them: the patch positions (0-based) of the tokens in their order
    assert torch.equal(mask.kept + 1, out[:, 1:, 0].long())


def test_the_tower_output_names_the_kept_grid_positions():
    """Under masking the output's ``kept [B, K]`` are the row-major grid positions of its content
    tokens: the tokens entering the first block are the position-embedded patches at ``kept``."""
    tower = _tower(0.5).train()
    image = torch.randn(3, 3, 32, 32)
    entering = []
    tower.trunk.blocks[0].register_forward_pre_hook(lambda m, args: entering.append(args[0]))
    out = tower(image)
    assert out.grid == (4, 4) and out.kept.shape == (3, 8) and out.tokens.shape == (3, 1 + 8, 64)
    t = tower.trunk
    embedded = t._pos_embed(t.patch_embed(image))[:, 1:]  # [3, 16, 64], no dropout in the tiny ViT
    at_kept = embedded.gather(1, out.kept[..., None].expand(-1, -1, 64))
    assert torch.allclose(entering[0][:, 1:], at_kept)
    assert all(len(set(row.tolist())) == 8 for row in out.kept)
    assert tower.eval()(image).kept is None and tower(image).grid == (4, 4)


def test_tower_masks_in_training_only():
    tower = _tower(0.5).train()
    image = torch.randn(4, 3, 32, 32)
    assert tower(image).tokens.shape[1] == 1 + 8  # 16 patches, 8 kept
    tower.eval()
    assert tower(image).tokens.shape[1] == 1 + 16
    with torch.no_grad():  # eval output does not depend on the mask setting
        unmasked = _tower(0.0).eval()(image).pooled
        assert torch.allclose(tower(image).pooled, unmasked, atol=1e-6)
    tower.mask_ratio = 0.0
    assert tower.train()(image).tokens.shape[1] == 17


@pytest.mark.parametrize("model", ["resnet18", "mixer_s16_224", "convnext_atto"])
def test_towers_that_cannot_mask_say_so(model):
    with pytest.raises(VLPError, match=f"image tower '{model}' cannot mask patches"):
        TimmImageTower(model, embed_dim=32, mask_ratio=0.5)


def test_bad_ratio_is_refused():
    with pytest.raises(VLPError, match=r"mask ratio must be in \[0, 1\)"):
        _tower(1.0)


def test_unmasked_tuning_switches_masking_off_and_scales_the_lr(tiny_module):
    from tests.test_module import _batch
    from vlp.callbacks import UnmaskedTuning

    tiny_module.towers["image"] = _tower(0.5)
    tiny_module.optim.schedule = "constant"
    seen = []

    original = tiny_module.training_step

    def step(batch, batch_idx):
        seen.append((tiny_module.towers.image.mask_ratio, tiny_module.trainer.optimizers[0].param_groups[0]["lr"]))
        return original(batch, batch_idx)

    tiny_module.training_step = step
    trainer = Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu",
                      callbacks=[UnmaskedTuning(start_step=2, lr_factor=0.1)])
    trainer.fit(tiny_module, train_dataloaders=torch.utils.data.DataLoader([_batch(8)] * 4, batch_size=None))
    lr = tiny_module.optim.lr
    assert [r for r, _ in seen] == [0.5, 0.5, 0.0, 0.0]
    assert seen[0][1] == pytest.approx(lr) and seen[3][1] == pytest.approx(0.1 * lr)

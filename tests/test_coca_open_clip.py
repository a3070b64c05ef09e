"""vlp's CoCa copied into open_clip's CoCa (benchmarks/open_clip_coca.py, used by
benchmarks/coca_generation.py) computes the same function and decodes the same greedy captions."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("open_clip")

from vlp.data.text_spec import TextSpec, bind_parts
from vlp.generation import Captioner

_spec = importlib.util.spec_from_file_location(
    "open_clip_coca", Path(__file__).parents[1] / "benchmarks" / "open_clip_coca.py")
occ = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(occ)

SPEC = TextSpec(vocab_size=64, pad_id=0, bos_id=1, eos_id=2, context_length=10)
IMAGES = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def pair():
    """A tiny coca_tiny-like vlp CoCa (timm ViT with pre_norm, 2 layers, width 64, 32 px) with every
    weight moved off its init (LayerNorms and biases included, as after training) and a sharp
    head, and its open_clip copy."""
    from vlp.module import VLPModule
    from vlp.heads import CaptionDecoder
    from vlp.objectives import CaptioningLoss, ContrastiveLoss
    from vlp.towers import CoCaImageTower, CoCaTextTower

    torch.manual_seed(0)
    image = CoCaImageTower("vit_small_patch16_224", embed_dim=64, image_size=32, init="clip", pool_queries=4,
                           pool_heads=2, model_kwargs={"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2,
                                                       "pre_norm": True})
    text = CoCaTextTower(vocab_size=SPEC.vocab_size, context_length=SPEC.context_length, width=64, layers=2, heads=2,
                         embed_dim=64)
    module = VLPModule({"image": image, "text": text}, [ContrastiveLoss(), CaptioningLoss()],
                       heads={"decoder": CaptionDecoder(layers=2, heads=4)})
    bind_parts(module, SPEC)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        head = module.heads.decoder.head.weight
        head.mul_(8)
        head[SPEC.eos_id] *= 1.5  # some captions end early, some run to max_length
    module.eval()
    return module, occ.build_open_clip_coca(module)


def test_same_logits_and_embeddings(pair):
    module, oc = pair
    text = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0, 0, 0],
                         [1, 3, 4, 5, 6, 7, 8, 9, 10, 2], [1, 11, 12, 13, 14, 15, 2, 0, 0, 0],
                         [1, 2, 0, 0, 0, 0, 0, 0, 0, 0], [1, 20, 21, 22, 23, 24, 25, 26, 27, 28]])
    diffs = occ.compare_forward(module, oc, IMAGES, text)
    assert diffs["logits_scale"] > 1  # not a trivially small output
    assert diffs["logits"] < 1e-4 and diffs["image_embedding"] < 1e-4 and diffs["text_embedding"] < 1e-4, diffs


def test_the_adjustments_are_needed(pair):
    """open_clip's plain parallel pooling (no LayerNorm after the poolers) is another function."""
    module, _ = pair
    text = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0, 0, 0]] * len(IMAGES))
    plain = occ.build_open_clip_coca(module)
    plain.visual.attn_pool = plain.visual.attn_pool[0]
    plain.visual.attn_pool_contrastive = plain.visual.attn_pool_contrastive[0]
    assert occ.compare_forward(module, plain, IMAGES, text)["logits"] > 1e-2


def test_same_greedy_tokens(pair):
    module, oc = pair
    captioner = Captioner(module)
    ours = captioner.generate(IMAGES, "greedy", max_length=8).ids
    theirs = occ.open_clip_greedy(oc, IMAGES, SPEC, 8)
    ended = (ours == SPEC.eos_id).any(1)
    assert 0 < ended.sum() < len(IMAGES)  # rows that end and rows that run to max_length
    assert occ.same_rows(ours, theirs, SPEC.pad_id).all(), (ours, theirs)
    # fixed length (the speed runs): the same steps; open_clip's last token is its forced end id
    ours = captioner.generate(IMAGES, "greedy", max_length=8, min_length=7).ids
    theirs = occ.open_clip_greedy(oc, IMAGES, SPEC, 8, exact_length=True)
    assert ours.shape == theirs.shape == (len(IMAGES), 9)
    assert torch.equal(ours[:, :8], theirs[:, :8]) and (theirs[:, 8] == SPEC.eos_id).all()

"""Few-shot linear heads (vlp.eval.few_shot): k shots per class drawn reproducibly, the
temperature read from the objective that compares the task's two names, the class-name head
equal to the zero-shot classifier before training, the random head's unit rows."""

import pytest
import torch
import torch.nn.functional as F

from vlp.eval.few_shot import LinearHead, few_shot, sample_shots, text_init_head


def test_sample_shots_takes_k_per_class_reproducibly():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    idx = sample_shots(labels, 2, seed=1)
    assert torch.bincount(labels[idx]).tolist() == [2, 2, 2]
    assert torch.equal(idx, sample_shots(labels, 2, seed=1))
    assert torch.bincount(labels[sample_shots(labels, 4, seed=0)]).tolist() == [3, 2, 4]


def test_few_shot_reads_the_temperature_of_the_objective_that_compares_its_names(tiny_module):
    """The scale as the loss uses it (clamped), of the objective comparing the task's two names
    (not the first objective with a scale); CLIP's cap 100 when none compares them."""
    import math

    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss, SigmoidLoss

    towers = dict(tiny_module.towers)
    clamped = ContrastiveLoss(init_logit_scale=5.0)  # above ln 100: clamped where used
    other = SigmoidLoss(name="other", b="text_2", init_logit_scale=1.0)
    module = VLPModule(towers, [other, clamped], share={"text_2": "text"})
    assert module.similarity_scale("image", "text") == pytest.approx(100.0)
    assert module.similarity_scale("text_2", "image") == pytest.approx(math.e)
    assert module.similarity_scale("image", "image") == 100.0


def test_class_name_head_is_the_zeroshot_classifier_before_training():
    g = torch.Generator().manual_seed(0)
    classifier = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    x = F.normalize(torch.randn(30, 8, generator=g), dim=-1)
    head = text_init_head(classifier, logit_scale=30.0)
    assert torch.allclose(head(x), 30.0 * x @ classifier.T, atol=1e-6)
    # few-shot with 0 steps: the text-initialised head scores exactly the zero-shot accuracy
    y = torch.randint(0, 5, (30,), generator=g)
    m, _ = few_shot(x, y, x, y, classifier, 30.0, shots=[1], seeds=2, inits=["text", "random"], steps=0,
                    lr=1e-2, weight_decay=0.0)
    assert m["text_1shot_top1"] == m["zeroshot_top1"] and m["text_1shot_top1_std"] == 0.0
    # training on the shots moves the heads away from their start
    m2, _ = few_shot(x, y, x, y, classifier, 30.0, shots=[5], seeds=1, inits=["text"], steps=50, lr=1e-2,
                     weight_decay=0.0)
    assert m2["text_5shot_top1"] > m["zeroshot_top1"]


def test_random_head_has_unit_rows_from_its_generator_and_scales_cosines():
    """The random init: unit-norm rows drawn from the generator (the same seed, the same head),
    bias 0, logits = scale * x @ weight^T + bias."""
    head = LinearHead(8, 5, 2.5, generator=torch.Generator().manual_seed(7))
    drawn = torch.randn(5, 8, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(head.weight, drawn / drawn.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.equal(head.bias, torch.zeros(5))
    assert sorted(name for name, _ in head.named_parameters()) == ["bias", "weight"]
    with torch.no_grad():
        head.bias.copy_(torch.arange(5.0))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(8))
    assert torch.allclose(head(x), 2.5 * x @ head.weight.T + torch.arange(5.0), atol=1e-6)

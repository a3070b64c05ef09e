"""CoCa's captioning loss: padding ignored, label smoothing, exact across ranks, and the objective
contract through the module."""

import pytest
import torch
import torch.nn.functional as F

from vlp.data.text_spec import TextSpec, bind_parts
from vlp.errors import VLPError
from vlp.objectives.captioning import CaptioningLoss, caption_loss

PAD = 3  # not 0, so that a loss that assumed 0 would fail


def _logits_labels(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    labels = torch.tensor([[4, 5, 2, PAD, PAD], [6, 7, 8, 9, 2]])
    return logits, labels


def test_the_loss_is_the_mean_over_real_tokens_and_padding_changes_nothing():
    logits, labels = _logits_labels()
    loss = caption_loss(logits, labels, PAD)
    real = labels != PAD
    expected = F.cross_entropy(logits[real], labels[real])
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad[~real].abs().sum() == 0 and logits.grad[real].abs().sum() > 0
    # other logits at the padding positions: the same loss
    other = logits.detach().clone()
    other[~real] = torch.randn_like(other[~real]) * 100
    assert torch.equal(caption_loss(other, labels, PAD), loss.detach())
    # while a real position's logits do count
    other[0, 0, labels[0, 0]] += 5
    assert not torch.allclose(caption_loss(other, labels, PAD), loss.detach())


def test_label_smoothing_is_torch_s_over_the_real_tokens():
    logits, labels = _logits_labels(1)
    real = labels != PAD
    got = caption_loss(logits, labels, PAD, label_smoothing=0.1)
    assert torch.allclose(got, F.cross_entropy(logits[real], labels[real], label_smoothing=0.1))
    assert not torch.allclose(got, caption_loss(logits, labels, PAD))


def test_halves_with_the_global_token_count_give_the_whole_batch_gradient():
    """What each of two ranks computes (its sum over the global count, times the world size,
    averaged by the strategy) equals the one-process loss and gradient."""
    logits, labels = _logits_labels(2)
    whole = caption_loss(logits, labels, PAD)
    (g_whole,) = torch.autograd.grad(whole, logits)
    total = (labels != PAD).sum().float() / 2
    halves = [caption_loss(logits[i : i + 1], labels[i : i + 1], PAD, total_tokens=total) for i in range(2)]
    averaged = (halves[0] + halves[1]) / 2
    (g_avg,) = torch.autograd.grad(averaged, logits)
    assert torch.allclose(averaged, whole) and torch.allclose(g_avg, g_whole, atol=1e-7)


def test_the_spec_s_pad_id_is_adopted_and_a_pad_that_ends_texts_refused():
    objective = CaptioningLoss()
    objective.bind_text_spec(TextSpec(vocab_size=20, pad_id=PAD, bos_id=1, eos_id=2, context_length=8))
    assert objective.pad_id == PAD
    with pytest.raises(VLPError, match="pad id that is neither the start nor the end-of-text id"):
        CaptioningLoss().bind_text_spec(TextSpec(vocab_size=20, pad_id=2, bos_id=1, eos_id=2, context_length=8))
    with pytest.raises(VLPError, match="pad_id 0 differs from the tokenizer's pad id 3"):
        CaptioningLoss(pad_id=0).bind_text_spec(TextSpec(vocab_size=20, pad_id=PAD, bos_id=1, eos_id=2,
                                                         context_length=8))


def test_caption_objective_keeps_the_contract_through_the_module():
    """It reads what its decoder head reads (the image tower's queries, the text tower's tokens),
    trains the head, the decoder pooler and the text tower, and reports the accuracy of the
    decoder's next-token guesses over the real labels."""
    from tests.test_module import _batch
    from vlp.data.tokenizer import TextTokenizer
    from vlp.heads import CaptionDecoder
    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss
    from vlp.towers import CoCaImageTower, CoCaTextTower

    torch.manual_seed(0)
    image = CoCaImageTower("vit_tiny_patch16_224", embed_dim=32, image_size=32, pool_queries=4, pool_heads=2,
                           model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2})
    text = CoCaTextTower(context_length=16, width=32, layers=1, heads=2, embed_dim=32)
    caption = CaptioningLoss()
    module = VLPModule({"image": image, "text": text}, [ContrastiveLoss(), caption],
                       heads={"decoder": CaptionDecoder(layers=1, heads=2)})
    bind_parts(module, TextTokenizer(context_length=16).spec)
    assert module.reads == {"image": {"pooled", "queries"}, "text": {"pooled", "tokens"}}
    assert caption.decoder is module.heads.decoder and caption.decoder.vocab_size == 8192
    assert module.batch_fields() == {"image", "text"}
    assert not list(caption.parameters())  # the decoder's parameters belong to model.heads alone
    batch = _batch(4)
    outputs = module(batch)
    assert outputs["image"].tokens.shape == (4, 1 + 16, 32) and outputs["image"].grid == (4, 4)  # the trunk's
    loss, metrics = caption(outputs, batch)
    with torch.no_grad():
        logits = module.heads.decoder(outputs["text"].tokens[:, :-1], outputs["image"].extra["queries"])
        labels = batch["text"][:, 1:]
        real = labels != caption.pad_id
        expected = ((logits.argmax(-1) == labels) & real).sum() / real.sum()
    assert torch.equal(metrics["token_acc"], expected)
    assert torch.allclose(loss, caption_loss(logits, labels, caption.pad_id))
    loss.backward()
    for part in (image.attn_pool, text, module.heads.decoder):  # the decoder queries, not the contrastive one
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert image.attn_pool_contrastive.query.grad is None


def test_a_captioning_objective_without_its_head_is_a_clear_error(tiny_module):
    from vlp.module import VLPModule

    with pytest.raises(VLPError, match="objective caption trains the head 'decoder', which model.heads does not name"):
        VLPModule(dict(tiny_module.towers), [CaptioningLoss()])


def test_the_decoder_needs_towers_that_report_their_shapes():
    from vlp.heads import CaptionDecoder

    with pytest.raises(VLPError, match="reads the towers image and text"):
        CaptionDecoder().attach({"image": torch.nn.Linear(2, 2)})
    with pytest.raises(VLPError, match="needs a text tower with width, vocab_size, context_length"):
        CaptionDecoder().attach({"image": torch.nn.Linear(2, 2), "text": torch.nn.Linear(2, 2)})
    from vlp.towers import TextTransformer

    bidirectional = TextTransformer(vocab_size=20, context_length=8, width=16, layers=1, heads=2, embed_dim=8,
                                    causal=False)
    with pytest.raises(VLPError, match="needs a causal text tower"):
        CaptionDecoder().attach({"image": torch.nn.Linear(2, 2), "text": bidirectional})
    causal = TextTransformer(vocab_size=20, context_length=8, width=16, layers=1, heads=2, embed_dim=8)
    with pytest.raises(VLPError, match="must report its width as queries_width"):
        CaptionDecoder().attach({"image": torch.nn.Linear(2, 2), "text": causal})


def _two_ranks(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from vlp.objectives.captioning import global_caption_loss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        states, weight, labels = _few_tokens()
        loss = global_caption_loss(states[rank : rank + 1] @ weight, labels[rank : rank + 1], PAD)
        loss.backward()
        grad = weight.grad.clone()
        dist.all_reduce(grad)
        grad /= world  # what DDP does with the ranks' gradients of a shared parameter
        torch.save({"loss": loss.detach(), "grad": grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _few_tokens():
    """Decoder states, a shared output layer and the labels of two captions whose only real
    label is on the first row: the second rank's share has none."""
    g = torch.Generator().manual_seed(4)
    states = torch.randn(2, 3, 6, generator=g)
    weight = torch.randn(6, 11, generator=g, requires_grad=True)
    labels = torch.tensor([[5, PAD, PAD], [PAD, PAD, PAD]])
    return states, weight, labels


def test_two_ranks_with_one_real_token_give_the_one_process_loss_and_gradient(tmp_path):
    """The divisor clamps the global count: rank 0 holds the batch's only token, so the ranks
    divide by 1 / 2 (and the averaged gradient is the one-process one); clamping each rank's
    share at 1 would halve it. Every rank reports the whole batch's mean."""
    import torch.multiprocessing as mp

    mp.spawn(_two_ranks, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    states, weight, labels = _few_tokens()
    whole = caption_loss(states @ weight, labels, PAD)
    whole.backward()
    assert weight.grad.abs().sum() > 0
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["loss"], whole.detach())
        assert torch.allclose(got["grad"], weight.grad, atol=1e-7)

"""Caption generation (vlp.generation): the key/value cache changes nothing, the search rules
hold, and a tiny CoCa learns to caption a few emoji exactly."""

import pytest
import torch
import torch.nn.functional as F

from vlp.data.text_spec import TextSpec, bind_parts
from vlp.errors import VLPError
from vlp.generation import Captioner, filter_logits

SPEC = TextSpec(vocab_size=24, pad_id=0, bos_id=1, eos_id=2, context_length=10)


def tiny_coca(spec=SPEC, seed=0, width=32, queries=4, vocab=None):
    from vlp.module import VLPModule
    from vlp.heads import CaptionDecoder
    from vlp.objectives import CaptioningLoss, ContrastiveLoss
    from vlp.towers import CoCaImageTower, CoCaTextTower

    torch.manual_seed(seed)
    image = CoCaImageTower("vit_tiny_patch16_224", embed_dim=width, image_size=32, pool_queries=queries, pool_heads=2,
                           model_kwargs={"patch_size": 8, "embed_dim": width, "depth": 1, "num_heads": 2})
    text = CoCaTextTower(vocab_size=vocab or spec.vocab_size, context_length=spec.context_length, width=width,
                         layers=1, heads=2, embed_dim=width)
    module = VLPModule({"image": image, "text": text}, [ContrastiveLoss(), CaptioningLoss()],
                       heads={"decoder": CaptionDecoder(layers=2, heads=2)})
    bind_parts(module, spec)
    return module


def sharpened(module):
    """Sharper next-token distributions than at init, and captions that end at varied lengths."""
    with torch.no_grad():
        head = module.heads.decoder.head.weight
        head.copy_(F.normalize(torch.randn(head.shape, generator=torch.Generator().manual_seed(0)), dim=1) * 4)
        head[SPEC.eos_id] *= 3
    return module


@pytest.fixture(scope="module")
def captioner():
    return Captioner(sharpened(tiny_coca()))


IMAGES = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_cached_decoding_gives_the_tokens_and_log_probabilities_of_the_full_pass(captioner, strategy):
    kw = {"num_beams": 3, "repetition_penalty": 1.3, "min_length": 1, "top_k": 5, "top_p": 0.9}
    fast = captioner.generate(IMAGES, strategy, generator=torch.Generator().manual_seed(0), **kw)
    slow = captioner.generate(IMAGES, strategy, generator=torch.Generator().manual_seed(0), use_cache=False, **kw)
    assert torch.equal(fast.ids, slow.ids)
    assert torch.allclose(fast.token_logprobs, slow.token_logprobs, atol=1e-4)
    assert torch.allclose(fast.scores, slow.scores, atol=1e-4)
    ended = (fast.ids == SPEC.eos_id).any(1)
    assert 0 < ended.sum() < len(IMAGES)  # some end (and leave the batch), some run to max_length
    assert (fast.token_logprobs <= 0).all() and (fast.token_logprobs[fast.ids[:, 1:] == SPEC.pad_id] == 0).all()


def test_greedy_takes_the_most_likely_token_and_beam_search_finds_a_likelier_caption(captioner):
    greedy = captioner.generate(IMAGES, "greedy")
    beam = captioner.generate(IMAGES, "beam", num_beams=4, length_penalty=0.0)  # rank by sum of log-probs
    assert (beam.scores >= greedy.scores - 1e-5).all() and (beam.scores > greedy.scores + 1e-3).any()
    one = captioner.generate(IMAGES, "beam", num_beams=1, length_penalty=0.0)
    assert torch.equal(one.ids, greedy.ids)  # one beam is greedy search
    # the score is the sum of the token log-probabilities
    assert torch.allclose(greedy.token_logprobs.sum(1), greedy.scores)


def test_lengths_the_end_token_and_banned_ids(captioner):
    out = captioner.generate(IMAGES, "greedy", max_length=3)
    assert out.ids.shape[1] <= 4 and (out.ids[:, 0] == SPEC.bos_id).all()
    forced = captioner.generate(IMAGES, "greedy", min_length=5)
    for row in forced.ids.tolist():
        body = row[1:]
        assert SPEC.eos_id not in body[:5]  # no end before 5 caption tokens
        assert SPEC.bos_id not in body  # the start id is never generated
        if SPEC.eos_id in body:  # after the end: padding only
            assert set(body[body.index(SPEC.eos_id) + 1:]) <= {SPEC.pad_id}
    with pytest.raises(VLPError, match=r"max_length must be in \[1, 10\]"):
        captioner.generate(IMAGES, max_length=11)
    with pytest.raises(VLPError, match="unknown generation strategy"):
        captioner.generate(IMAGES, "nucleus")


def test_repetition_penalty_reduces_repeats(captioner):
    def repeats(ids):
        return sum(len(r) - len(set(r)) for r in (x[1:] for x in ids.tolist()))

    plain = captioner.generate(IMAGES, "greedy", max_length=9)
    penalised = captioner.generate(IMAGES, "greedy", max_length=9, repetition_penalty=5.0)
    assert repeats(penalised.ids) < repeats(plain.ids)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_fixed_steps_runs_every_step_and_gives_the_same_captions(strategy):
    module = sharpened(tiny_coca())
    with torch.no_grad():
        module.heads.decoder.head.weight[SPEC.eos_id] *= 2  # both captions end before 9 tokens
    captioner = Captioner(module)
    images = IMAGES[[1, 4]]
    calls = []
    hook = captioner.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        free = captioner.generate(images, strategy, num_beams=2)
        n_free = len(calls)
        calls.clear()
        fixed = captioner.generate(images, strategy, num_beams=2, fixed_steps=True)
    finally:
        hook.remove()
    assert n_free < 9 and len(calls) == 9 and torch.equal(free.ids, fixed.ids)


def _fsdp2_rank(rank, world, init_file, out_dir):
    import os
    import sys

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from vlp.strategies import shard_fsdp2

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    module = sharpened(tiny_coca())
    shard_fsdp2(module.towers, module.objectives, init_device_mesh("cpu", (world,)))
    captioner = Captioner(module)
    mine = IMAGES[:3] if rank == 0 else IMAGES[3:]  # captions of other lengths on each rank
    out = {s: captioner.generate(mine, s, num_beams=2, fixed_steps=True).ids for s in ("greedy", "beam")}
    torch.save(out, os.path.join(out_dir, f"r{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # no C++ static destructors: gloo's threads may abort the process at exit


def test_generation_with_fsdp2_sharded_parameters_gives_the_unsharded_captions(captioner, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_fsdp2_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"r{r}.pt") for r in range(2)]
    for strategy in ("greedy", "beam"):
        ref = captioner.generate(IMAGES, strategy, num_beams=2).ids
        for ids, rows in ((got[0][strategy], ref[:3]), (got[1][strategy], ref[3:])):
            width = ids.shape[1]
            assert torch.equal(ids, rows[:, :width]) and (rows[:, width:] == SPEC.pad_id).all()


def test_log_likelihood_sums_the_step_by_step_log_probabilities_of_each_text(captioner):
    from vlp.generation import _Steps

    g = torch.Generator().manual_seed(3)
    texts = torch.full((4, SPEC.context_length), SPEC.pad_id)
    for row, n in enumerate([1, 3, 6, 8]):  # start, n ids, end, padding
        texts[row, 0] = SPEC.bos_id
        texts[row, 1:n + 1] = torch.randint(3, SPEC.vocab_size, (n,), generator=g)
        texts[row, n + 1] = SPEC.eos_id
    got = captioner.log_likelihood(IMAGES, texts, chunk=3)  # chunks that split an image's texts
    module = captioner.module.eval()
    with torch.no_grad():
        image = module.run_tower("image", IMAGES, tokens=True).extra["queries"]
        for i in range(len(IMAGES)):
            for t, row in enumerate(texts):
                length = int((row != SPEC.pad_id).sum())
                steps = _Steps(captioner.text_tower, captioner.decoder, image[i:i + 1], None, True)
                total = sum(float(steps.logits(row[None, :k + 1]).log_softmax(-1)[0, row[k + 1]])
                            for k in range(length - 1))
                assert got[i, t].item() == pytest.approx(total, abs=1e-4)
    with pytest.raises(VLPError, match=r"token ids \[P, L\]"):
        captioner.log_likelihood(IMAGES, texts[:, :1])


def test_top_k_and_top_p_keep_the_likeliest_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.85)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True]]


def test_a_model_without_a_caption_decoder_is_refused(tiny_module, captioner):
    with pytest.raises(VLPError, match="a caption decoder named 'decoder' in model.heads; this one has no heads"):
        Captioner(tiny_module)
    with pytest.raises(VLPError, match="named 'other' in model.heads; this one has \\['decoder'\\]"):
        Captioner(captioner.module, head="other")


def _emoji_pairs(n=4):
    from vlp.data.decode import decode_image, image_member
    from vlp.data.eval_set import EvalData
    from vlp.data.shards import expand_shards
    from vlp.data.tar_reader import tar_samples

    transform = EvalData(None, 32).transform()
    images, captions = [], []
    for sample in tar_samples(expand_shards("builtin:emoji/google/train-000000.tar")[0]):
        images.append(transform(decode_image(sample[image_member(sample)])))
        captions.append(sample["txt"].decode())
        if len(images) == n:
            break
    return torch.stack(images), captions


def test_a_tiny_coca_overfits_four_emoji_and_captions_them_exactly():
    from vlp.data.tokenizer import TextTokenizer

    tok = TextTokenizer(context_length=10)
    images, captions = _emoji_pairs()
    module = tiny_coca(tok.spec, width=64, queries=8)
    batch = {"image": images, "text": tok(captions)}
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=0.0)
    module.log = lambda *a, **k: None
    module.train()
    for _ in range(100):  # exact from about 60 steps
        opt.zero_grad()
        loss = module.objective_loss(module(batch), batch)
        loss.backward()
        opt.step()
    captioner = Captioner(module)
    assert tok.decode(captioner.generate(images, "greedy").ids) == captions
    assert tok.decode(captioner.generate(images, "beam", num_beams=3).ids) == captions
    # scored by the decoder, each image's own caption is the likeliest of the four (CapPa)
    assert torch.equal(captioner.log_likelihood(images, tok(captions)).argmax(1), torch.arange(4))

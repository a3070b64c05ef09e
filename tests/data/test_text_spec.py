"""One text spec, owned by the tokenizer and adopted by every part that reads token ids.

The tokenizer here has XLM-R's special ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2): a part that
assumed padding id 0 would treat the start token as padding and the padding as text.
"""

import pytest
import torch
from torch import nn

from vlp.data.text_spec import TextSpec, bind_parts
from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.towers import HFTextTower, TextTransformer

WORDS = ["grinning", "face", "cat", "with", "smiling", "eyes", "[UNK]"]


def xlmr_like_tokenizer(folder, context_length: int = 8) -> TextTokenizer:
    """A word-level tokenizer with XLM-R's special ids: ``<sot>`` 0, ``<pad>`` 1, ``<eot>`` 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = folder / "xlmr_like.json"
    if not path.exists():
        vocab = {"<sot>": 0, "<pad>": 1, "<eot>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(path))
    return TextTokenizer(str(path), context_length=context_length)


TEXTS = ["grinning face with smiling eyes", "cat face"]


def test_the_tokenizer_owns_its_ids(tmp_path):
    tok = xlmr_like_tokenizer(tmp_path)
    assert tok.spec == TextSpec(vocab_size=10, pad_id=1, bos_id=0, eos_id=2, context_length=8)
    ids = tok(TEXTS)
    assert ids[1].tolist() == [0, 5, 4, 2, 1, 1, 1, 1]
    assert tok.decode(ids) == TEXTS


def test_a_spec_with_an_id_outside_its_vocabulary_is_refused():
    with pytest.raises(VLPError, match=r"pad_id 10 is outside the vocabulary \[0, 10\)"):
        TextSpec(vocab_size=10, pad_id=10, bos_id=0, eos_id=2, context_length=8)


@pytest.mark.parametrize("causal", [True, False])
def test_text_transformer_masks_and_pools_with_the_tokenizers_pad_id(tmp_path, causal):
    short, long = xlmr_like_tokenizer(tmp_path, 8), xlmr_like_tokenizer(tmp_path, 12)
    torch.manual_seed(0)
    tower = TextTransformer(vocab_size=16, context_length=12, width=32, layers=2, heads=2, embed_dim=16,
                            causal=causal).eval()
    unbound = [tower(short(TEXTS)).pooled, tower(long(TEXTS)).pooled]
    tower.bind_text_spec(long.spec)
    assert tower.pad_id == 1
    out_short, out_long = tower(short(TEXTS)), tower(long(TEXTS))
    # the start token (id 0) is text, the padding (id 1) is not
    assert torch.equal(out_long.token_mask, long(TEXTS) != 1)
    assert out_long.token_mask[:, 0].all()
    # pooled at the end-of-text token, padding masked: more padding changes nothing
    torch.testing.assert_close(out_short.pooled, out_long.pooled, atol=1e-5, rtol=1e-5)
    # with padding id 0 (the tower's value before it is bound) it did
    assert not torch.allclose(unbound[0], unbound[1], atol=1e-3)


def _tiny_hf_config(**kw) -> dict:
    return {"vocab_size": 16, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 40, **kw}


@pytest.mark.parametrize("model_type, model_pad", [("xlm-roberta", 1), ("bert", None)])
def test_hf_text_tower_masks_with_the_tokenizers_pad_id(tmp_path, model_type, model_pad):
    short, long = xlmr_like_tokenizer(tmp_path, 8), xlmr_like_tokenizer(tmp_path, 12)
    torch.manual_seed(0)
    config = _tiny_hf_config(model_type=model_type, pad_token_id=model_pad)
    tower = HFTextTower(config=config, embed_dim=8).eval()
    assert tower.pad_id == (0 if model_pad is None else model_pad)  # until bound: the transformer's, else 0
    tower.bind_text_spec(long.spec)
    assert tower.pad_id == 1
    out_short, out_long = tower(short(TEXTS)), tower(long(TEXTS))
    assert torch.equal(out_long.token_mask, long(TEXTS) != 1)
    torch.testing.assert_close(out_short.pooled, out_long.pooled, atol=1e-5, rtol=1e-5)


def test_an_explicit_pad_id_other_than_the_tokenizers_is_refused(tmp_path):
    spec = xlmr_like_tokenizer(tmp_path).spec
    towers = [TextTransformer(vocab_size=16, context_length=8, width=16, layers=1, heads=2, embed_dim=8, pad_id=0),
              HFTextTower(config=_tiny_hf_config(model_type="bert", pad_token_id=1), embed_dim=8, pad_id=0)]
    for tower in towers:
        with pytest.raises(VLPError, match=r"^pad_id 0 differs from the tokenizer's pad id 1 "):
            tower.bind_text_spec(spec)
        assert tower.pad_id == 0
    agreeing = TextTransformer(vocab_size=16, context_length=8, width=16, layers=1, heads=2, embed_dim=8, pad_id=1)
    agreeing.bind_text_spec(spec)
    assert agreeing.pad_id == 1


def test_a_transformer_that_pads_elsewhere_is_refused(tmp_path):
    # BERT's config pads with 0: its embedding of id 0 (here the start token) would stay zero
    tower = HFTextTower(config=_tiny_hf_config(model_type="bert"), embed_dim=8)
    with pytest.raises(VLPError, match=r"^the transformer's pad_token_id 0 differs from the tokenizer's pad id 1 "):
        tower.bind_text_spec(xlmr_like_tokenizer(tmp_path).spec)


@pytest.mark.parametrize("sizes, message", [
    ({"vocab_size": 9}, "vocab_size 9 is smaller than the tokenizer's vocabulary of 10 tokens"),
    ({"context_length": 6}, "context_length 6 is shorter than the tokenizer's context_length 8"),
])
def test_a_text_tower_smaller_than_the_tokenizer_is_refused(tmp_path, sizes, message):
    shape = {"vocab_size": 16, "context_length": 8, **sizes}
    tower = TextTransformer(**shape, width=16, layers=1, heads=2, embed_dim=8)
    with pytest.raises(VLPError, match=f"^{message}$"):
        tower.bind_text_spec(xlmr_like_tokenizer(tmp_path).spec)


def test_bind_parts_reaches_every_part_once_and_names_a_refusal(tmp_path):
    spec = xlmr_like_tokenizer(tmp_path).spec

    class Model(nn.Module):
        def __init__(self, text, decoder):
            super().__init__()
            # one tower under two names (as CLIPPO shares one), and a part deeper down
            self.towers = nn.ModuleDict({"text": text, "image": text, "decoder": nn.Sequential(decoder)})

    calls = []

    class Decoder(nn.Module):
        def bind_text_spec(self, spec):
            calls.append(spec)

    tower = TextTransformer(vocab_size=16, context_length=8, width=16, layers=1, heads=2, embed_dim=8)
    assert bind_parts(Model(tower, Decoder()), spec) == ["towers.text", "towers.decoder.0"]
    assert tower.pad_id == 1 and tower.text_spec is spec and calls == [spec]
    refusing = TextTransformer(vocab_size=16, context_length=8, width=16, layers=1, heads=2, embed_dim=8, pad_id=0)
    with pytest.raises(VLPError, match=r"^model\.towers\.text: pad_id 0 differs from the tokenizer's pad id 1 "):
        bind_parts(Model(refusing, Decoder()), spec)

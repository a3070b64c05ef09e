import json

import pytest
import torch

from vlp.data.tokenizer import HFTokenizer, TextTokenizer, builtin_path
from vlp.errors import VLPError


def test_builtin_tokenizer_adds_specials_pads_and_truncates():
    tok = TextTokenizer(context_length=8)
    out = tok(["grinning face", "a b c d e f g h i j k l"])
    assert out.shape == (2, 8) and out.dtype == torch.long
    assert out[0, 0] == tok.sot_id
    n = int((out[0] != tok.pad_id).sum())
    assert out[0, n - 1] == tok.eot_id and (out[0, n:] == tok.pad_id).all()
    # truncated texts keep their end-of-text token in the last slot
    assert out[1, -1] == tok.eot_id and (out[1] != tok.pad_id).all()


def test_builtin_tokenizer_is_case_insensitive_and_handles_any_script():
    tok = TextTokenizer(context_length=16)
    a, b = tok(["Grinning FACE", "grinning face"])
    assert torch.equal(a, b)
    assert (tok(["日本語のテキスト 😀"])[0] != tok.pad_id).sum() > 3


def test_user_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<sot>": 1, "<eot>": 2, "hello": 3, "world": 4, "[UNK]": 5}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    t.save(str(path))
    tok = TextTokenizer(str(path), context_length=6)
    assert tok(["hello world"]).tolist() == [[1, 3, 4, 2, 0, 0]]
    assert tok.vocab_size == 6


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(VLPError, match="tokenizer file not found"):
        TextTokenizer(str(tmp_path / "nope.json"))


def test_hf_tokenizer_from_local_directory(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "grinning", "face"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(str(tmp_path / "tok"))
    tok = HFTokenizer(str(tmp_path / "tok"), context_length=6)
    assert tok(["grinning face"]).tolist() == [[2, 5, 6, 3, 0, 0]]
    assert tok.pad_id == 0


def test_builtin_vocabulary_ships_with_the_package():
    spec = json.loads(builtin_path().read_text())
    assert spec["model"]["type"] == "BPE"

import json
import tarfile
import unicodedata
from importlib import resources
from pathlib import Path

import pytest
import torch

from vlp.data.text_spec import TextSpec
from vlp.data.tokenizer import HFTokenizer, TextTokenizer, builtin_path
from vlp.errors import VLPError


def test_builtin_tokenizer_adds_specials_pads_and_truncates():
    tok = TextTokenizer(context_length=8)
    spec = tok.spec
    assert spec == TextSpec(vocab_size=8192, pad_id=0, bos_id=1, eos_id=2, context_length=8)
    out = tok(["grinning face", "a b c d e f g h i j k l"])
    assert out.shape == (2, 8) and out.dtype == torch.long
    assert out[0, 0] == spec.bos_id
    n = int((out[0] != spec.pad_id).sum())
    assert out[0, n - 1] == spec.eos_id and (out[0, n:] == spec.pad_id).all()
    # truncated texts keep their end-of-text token in the last slot
    assert out[1, -1] == spec.eos_id and (out[1] != spec.pad_id).all()


def test_builtin_tokenizer_is_case_insensitive_and_handles_any_script():
    tok = TextTokenizer(context_length=16)
    a, b = tok(["Grinning FACE", "grinning face"])
    assert torch.equal(a, b)
    assert (tok(["日本語のテキスト 😀"])[0] != tok.spec.pad_id).sum() > 3


def test_user_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<sot>": 1, "<eot>": 2, "hello": 3, "world": 4, "[UNK]": 5}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    t.save(str(path))
    tok = TextTokenizer(str(path), context_length=6)
    assert tok(["hello world"]).tolist() == [[1, 3, 4, 2, 0, 0]]
    assert tok.spec == TextSpec(vocab_size=6, pad_id=0, bos_id=1, eos_id=2, context_length=6)
    assert tok.decode([[1, 3, 4, 2, 0, 0]]) == ["hello world"]


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
    # BERT names no bos / eos: its text starts with [CLS] and ends with [SEP]
    assert tok.spec == TextSpec(vocab_size=7, pad_id=0, bos_id=2, eos_id=3, context_length=6)
    assert tok.decode(tok(["grinning face", "face"])) == ["grinning face", "face"]


def _emoji_texts() -> list[str]:
    """Captions and the nine-language labels (Japanese, Chinese, Hindi, Korean, Russian, ...) of
    the built-in google test split."""
    shard = Path(str(resources.files("vlp.data") / "emoji" / "google" / "test-000000.tar"))
    captions, labels = [], []
    with tarfile.open(shard) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".txt"):
                captions.append(tar.extractfile(member).read().decode())
            elif member.name.endswith(".json"):
                labels += json.loads(tar.extractfile(member).read())["labels"].values()
    return captions + labels


def test_builtin_tokenizer_decodes_real_captions_and_labels_back():
    texts = _emoji_texts()
    assert any("\u3040" <= ch <= "\u30ff" for t in texts for ch in t)  # Japanese kana among them
    tok = TextTokenizer(context_length=77)
    ids = tok(texts)
    assert (ids[:, -1] == tok.spec.pad_id).all()  # nothing truncated
    # the vocabulary lowercases and NFC-normalises; everything else comes back as it was
    assert tok.decode(ids) == [unicodedata.normalize("NFC", t).lower() for t in texts]


def test_decode_stops_at_the_end_of_text_token():
    tok = TextTokenizer(context_length=8)
    spec = tok.spec
    face, grin = tok(["face", "grinning"])[:, 1].tolist()
    # a generated sequence may go on after its end: the text ends there
    assert tok.decode(torch.tensor([[spec.bos_id, face, spec.eos_id, grin, grin]])) == ["face"]
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        tok.decode(torch.tensor([spec.bos_id, face]))


def test_builtin_vocabulary_ships_with_the_package():
    spec = json.loads(builtin_path().read_text())
    assert spec["model"]["type"] == "BPE"

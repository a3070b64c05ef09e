"""Offline tokenizers: a byte-level BPE (tokenizers library) and a transformers one.

Both turn a list of strings into a LongTensor ``[B, context_length]`` padded with the pad
id, turn such ids back into strings (``decode``), and own the ``spec`` (vlp.data.text_spec:
vocabulary size, pad / bos / eos ids, context length) that the text towers adopt.

The built-in vocabulary ``assets/emoji_bpe.json`` was trained on the captions,
tags and nine-language labels of the emoji *train* split:

    python -m vlp.data.tokenizer build vlp/data/assets/emoji_bpe.json

Your own tokenizer: ``--data.tokenizer.path my/tokenizer.json`` (any tokenizers
``tokenizer.json``; it must define ``<pad>``, ``<sot>`` and ``<eot>``, at any ids: the
towers take them from the spec), or ``vlp.data.tokenizer.HFTokenizer`` with a local
transformers directory. Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import torch

from vlp.data.text_spec import TextSpec
from vlp.errors import VLPError

BUILTIN_VOCAB = "emoji_bpe.json"
SPECIALS = ["<pad>", "<sot>", "<eot>"]


def builtin_path(name: str = BUILTIN_VOCAB) -> Path:
    return Path(str(resources.files("vlp.data") / "assets" / name))


class TextTokenizer:
    """Byte-level BPE with start/end tokens, truncation and padding.

    Args:
        path: a ``tokenizer.json`` file; None = the built-in emoji vocabulary.
        context_length: tokens per text, including ``<sot>`` and ``<eot>``.
    """

    def __init__(self, path: str | None = None, context_length: int = 32):
        from tokenizers import Tokenizer

        file = Path(path) if path else builtin_path()
        if not file.is_file():
            raise VLPError(f"tokenizer file not found: {file}")
        if context_length < 3:
            raise VLPError(f"context_length must be >= 3, got {context_length}")
        self.tok = Tokenizer.from_file(str(file))
        self.tok.no_padding()
        self.tok.no_truncation()
        ids = [self.tok.token_to_id(s) for s in SPECIALS]
        if None in ids:
            raise VLPError(f"tokenizer {file} lacks one of the special tokens {SPECIALS}")
        pad, sot, eot = ids
        self.spec = TextSpec(vocab_size=self.tok.get_vocab_size(), pad_id=pad, bos_id=sot, eos_id=eot,
                             context_length=context_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        spec = self.spec
        out = torch.full((len(texts), spec.context_length), spec.pad_id, dtype=torch.long)
        body = spec.context_length - 2
        for i, enc in enumerate(self.tok.encode_batch(texts, add_special_tokens=False)):
            ids = [spec.bos_id, *enc.ids[:body], spec.eos_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: torch.Tensor | list[list[int]]) -> list[str]:
        """``[B, L]`` ids -> B texts (see TextSpec.strip). The built-in vocabulary lowercases
        and NFC-normalises, so its texts come back that way."""
        texts = self.tok.decode_batch([self.spec.strip(row) for row in _rows(ids)], skip_special_tokens=False)
        return [t.strip() for t in texts]  # the byte-level decoder keeps the space put before the first word


class HFTokenizer:
    """A transformers tokenizer from a local directory (BERT-like towers).

    Args:
        path: directory with the tokenizer files (``local_files_only``).
        context_length: padded / truncated length.
    """

    def __init__(self, path: str, context_length: int = 32):
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise VLPError(f"tokenizer directory not found: {path}")
        tok = self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tok.pad_token_id is None:
            raise VLPError(f"tokenizer {path} has no padding token; vlp pads every text to context_length")
        # BERT-like tokenizers frame a text with [CLS] ... [SEP] and name no bos / eos
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        self.spec = TextSpec(vocab_size=len(tok), pad_id=tok.pad_token_id, bos_id=bos, eos_id=eos,
                             context_length=context_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tok(
            list(texts), padding="max_length", truncation=True,
            max_length=self.spec.context_length, return_tensors="pt",
        )
        return enc["input_ids"]

    def decode(self, ids: torch.Tensor | list[list[int]]) -> list[str]:
        """``[B, L]`` ids -> B texts (see TextSpec.strip)."""
        return self.tok.batch_decode([self.spec.strip(row) for row in _rows(ids)])


def _rows(ids: torch.Tensor | list[list[int]]) -> list[list[int]]:
    rows = ids.tolist() if torch.is_tensor(ids) else list(ids)
    if not all(isinstance(row, (list, tuple)) for row in rows):
        raise ValueError("decode takes a batch of id sequences [B, L]")
    return rows


def build(out: str, shard_glob: str | None = None, vocab_size: int = 8192) -> None:
    """Train the byte-level BPE on captions, tags and labels of the emoji train split."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from vlp.data.shard_writer import read_samples

    root = Path(str(resources.files("vlp.data") / "emoji"))
    shards = sorted(root.glob(shard_glob or "google/train-*.tar"))
    texts = []
    for _, fields in read_samples(shards):
        meta = json.loads(fields["json"])
        texts += [fields["txt"].decode(), *meta["labels"].values(), *meta["tags"]]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    print(f"wrote {out}: {tok.get_vocab_size()} tokens from {len(texts)} texts")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "build":
        sys.exit("usage: python -m vlp.data.tokenizer build OUT.json")
    build(sys.argv[2])

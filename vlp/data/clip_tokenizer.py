"""OpenAI CLIP's tokenizer, built in: the byte-level BPE of web-scale CLIP models (49,408 tokens:
256 byte units, the same with the end-of-word mark ``</w>``, 48,894 merges, ``<start_of_text>``
49406 and ``<end_of_text>`` 49407; padding 0), with the text cleaning open_clip applies, so its
ids are ``open_clip.tokenize``'s.

    data:
      tokenizer: {class_path: vlp.data.clip_tokenizer.ClipTokenizer, init_args: {context_length: 77}}

The merges ship in ``vlp/data/assets`` (``clip_bpe_simple_vocab_16e6.txt.gz``, OpenAI's file,
licence beside it); nothing is downloaded. The merges run in the ``tokenizers`` library (Rust):
cleaning is the only per-string Python work (ftfy's ``fix_text``, HTML entities unescaped twice,
whitespace collapsed, lowercased: open_clip's ``clean='lower'``). As open_clip, a text is
``<start_of_text>`` + its tokens + ``<end_of_text>``; a longer one is cut to the context with
``<end_of_text>`` kept last, a shorter one padded with 0.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache

import torch

from vlp.data.text_spec import TextSpec
from vlp.data.tokenizer import _rows, builtin_path
from vlp.errors import VLPError

MERGES_FILE = "clip_bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the file's first merges, as OpenAI's tokenizer reads it
SOT, EOT = "<start_of_text>", "<end_of_text>"
# OpenAI's word pattern; the special tokens are alternatives of it (``SPECIAL_PATTERN``): one
# written in a text is that token unless a run of punctuation before it swallows its ``<``
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SPECIAL_PATTERN = f"{SOT}|{EOT}|{PATTERN}"


def byte_table() -> dict[int, str]:
    """Byte -> its printable stand-in, in OpenAI's order (the order of the ids 0..255)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def clean(text: str) -> str:
    """open_clip's ``clean='lower'``: ftfy, HTML entities unescaped twice, whitespace collapsed,
    lowercased."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


@lru_cache(maxsize=2)
def _tokenizer(path: str):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except OSError as e:
        raise VLPError(f"CLIP merges file {path} cannot be read: {e}") from None
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    units = list(byte_table().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
                               end_of_word_suffix="</w>", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),  # keep the words, drop spaces
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tok


class ClipTokenizer:
    """OpenAI CLIP's BPE (see the module docstring).

    Args:
        context_length: tokens per text, start and end tokens included (CLIP: 77).
        path: the merges file; None = the one vlp ships.
    """

    def __init__(self, context_length: int = 77, path: str | None = None):
        if context_length < 3:
            raise VLPError(f"context_length must be >= 3, got {context_length}")
        self.tok = _tokenizer(str(path or builtin_path(MERGES_FILE)))
        size = self.tok.get_vocab_size() + 2  # and the two special tokens, after the merges
        if size != 49408:
            raise VLPError(f"{path}: not CLIP's merges ({size} tokens)")
        self.sot, self.eot = size - 2, size - 1
        self.spec = TextSpec(vocab_size=size, pad_id=0, bos_id=self.sot, eos_id=self.eot,
                             context_length=context_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        n = self.spec.context_length
        cleaned = [clean(t) for t in texts]
        rows = []
        for text, enc in zip(cleaned, self.tok.encode_batch(cleaned, add_special_tokens=False)):
            body = self._with_specials(text) if "t>" in text and "<" in text else enc.ids
            ids = [self.sot, *body[: n - 2], self.eot]  # open_clip's truncation: the end token stays last
            rows.append(ids + [0] * (n - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(texts), n)

    def _with_specials(self, text: str) -> list[int]:
        """A text that may name a special token: split by OpenAI's whole pattern (specials first at
        each position, as open_clip), the specials mapped to their ids, the rest through the BPE."""
        import regex

        ids: list[int] = []
        pieces: list[str] = []
        for piece in regex.findall(SPECIAL_PATTERN, text, flags=regex.IGNORECASE):
            if piece in (SOT, EOT):
                if pieces:
                    ids += self.tok.encode(pieces, is_pretokenized=True, add_special_tokens=False).ids
                    pieces = []
                ids.append(self.sot if piece == SOT else self.eot)
            else:
                pieces.append(piece)
        if pieces:
            ids += self.tok.encode(pieces, is_pretokenized=True, add_special_tokens=False).ids
        return ids

    def decode(self, ids: torch.Tensor | list[list[int]]) -> list[str]:
        """``[B, L]`` ids -> B texts: the tokens between the start and the end token, their bytes
        back to UTF-8, words joined with spaces (the cleaned text: lowercased), as open_clip decodes."""
        to_byte = {c: b for b, c in byte_table().items()}
        out = []
        for row in _rows(ids):
            row = list(row)
            if row and row[0] == self.sot:
                row = row[1:]
            row = row[: row.index(self.eot)] if self.eot in row else row
            units = "".join(self.tok.id_to_token(i) for i in row if i < self.sot)
            words = [bytes(to_byte[c] for c in word).decode("utf-8", errors="replace")
                     for word in units.split("</w>") if word]
            out.append(" ".join(words))
        return out

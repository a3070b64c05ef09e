"""TextSpec: what a tokenizer's ids mean, the one place the rest of vlp reads them from.

The tokenizer owns it (``TextTokenizer.spec``, ``HFTokenizer.spec``). Every part that reads
token ids (a text tower masking and pooling at the padding id, a caption decoder stopping at
the end-of-text id) has a method ``bind_text_spec(spec)`` that checks the spec against its
own sizes and adopts its ids; ``bind_parts`` hands the spec to all of them (``vlp fit`` and
``vlp eval`` call it), so a tokenizer whose padding id is not 0 (XLM-R: pad 1, BOS 0) is
either followed everywhere or refused before training, never silently mis-masked.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vlp.errors import VLPError


@dataclass(frozen=True)
class TextSpec:
    """Ids and sizes of a tokenizer's output ``[B, context_length]``.

    Args:
        vocab_size: ids are in ``[0, vocab_size)``.
        pad_id: fills the positions after the text.
        bos_id: the token put before the text; None if the tokenizer puts none.
        eos_id: the token put after the text (CLIP pools there); None if none.
        context_length: tokens per text, special tokens included.
    """

    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int | None
    context_length: int

    def __post_init__(self) -> None:
        if self.vocab_size < 1 or self.context_length < 1:
            raise VLPError(f"text spec needs vocab_size and context_length >= 1, got {self.vocab_size} and "
                           f"{self.context_length}")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise VLPError(f"text spec {name} {value} is outside the vocabulary [0, {self.vocab_size})")

    def check_part(self, *, vocab_size: int | None = None, context_length: int | None = None,
                   pad_id: int | None = None) -> None:
        """Refuse a part whose sizes do not cover this spec, or whose explicit ``pad_id`` differs
        (None: the part has no such setting, or leaves it to the spec)."""
        if vocab_size is not None and vocab_size < self.vocab_size:
            raise VLPError(f"vocab_size {vocab_size} is smaller than the tokenizer's vocabulary of "
                           f"{self.vocab_size} tokens")
        if context_length is not None and context_length < self.context_length:
            raise VLPError(f"context_length {context_length} is shorter than the tokenizer's context_length "
                           f"{self.context_length}")
        if pad_id is not None and pad_id != self.pad_id:
            raise VLPError(f"pad_id {pad_id} differs from the tokenizer's pad id {self.pad_id} "
                           "(leave pad_id unset to take the tokenizer's)")

    def strip(self, ids: list[int]) -> list[int]:
        """The text's own ids: after the start id, up to the first end-of-text id (a generated
        sequence may go on after it), without padding."""
        ids = list(ids)
        if ids and ids[0] == self.bos_id:  # first, in case bos and eos are one id (GPT-2)
            ids = ids[1:]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return [i for i in ids if i not in (self.pad_id, self.bos_id)]


def bind_parts(model: nn.Module, spec: TextSpec) -> list[str]:
    """Hand ``spec`` to every submodule of ``model`` that has ``bind_text_spec`` (a part shared
    under two names gets it once); returns their names. A refusal becomes one line naming the
    part as the recipe does (``model.towers.text: pad_id 0 differs ...``)."""
    bound = []
    for name, part in model.named_modules():
        if not hasattr(part, "bind_text_spec"):
            continue
        try:
            part.bind_text_spec(spec)
        except VLPError as e:
            raise VLPError(f"{f'model.{name}' if name else 'model'}: {e}") from None
        bound.append(name)
    return bound

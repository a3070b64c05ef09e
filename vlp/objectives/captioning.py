"""CoCa's captioning loss (Yu et al. 2022): next-token cross-entropy of a multimodal decoder."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vlp.data.text_spec import TextSpec
from vlp.errors import VLPError
from vlp.objectives.base import Objective
from vlp.distributed import rank_and_world
from vlp.towers.output import TowerOutput


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int, label_smoothing: float = 0.0,
                 total_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the labels that are not ``pad_id``.

    ``logits [B, T, V]`` predict ``labels [B, T]``; positions whose label is the pad id add
    nothing (padding is not a token to learn: neither its logits nor its gradients count).
    ``total_tokens``: the divisor as given (see ``global_caption_loss``); None = this batch's
    real labels (at least 1), i.e. open_clip's ``CrossEntropyLoss(ignore_index=pad_id)``.
    """
    summed = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=pad_id,
                             label_smoothing=label_smoothing, reduction="sum")
    count = (labels != pad_id).sum().clamp(min=1) if total_tokens is None else total_tokens
    return summed / count


def global_caption_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """``caption_loss`` over the real tokens of the whole batch, on every rank alike.

    Each rank divides its sum by ``max(global real tokens, 1) / world``: the strategy's average
    of the ranks' gradients is then the one-process gradient on the whole batch (clamping the
    global count, not a rank's share of it: a rank that holds the batch's only token must not
    be divided by 1 where one process divides by 1 / world of it). The value returned is the
    global mean on every rank (the sum is all-reduced without gradient), so what is logged is
    the whole batch's loss, not a rank's share scaled by the world size. One process: the plain
    mean.
    """
    _, world = rank_and_world()
    if world == 1:
        return caption_loss(logits, labels, pad_id, label_smoothing)
    summed = caption_loss(logits, labels, pad_id, label_smoothing, total_tokens=torch.ones((), device=logits.device))
    totals = torch.stack([(labels != pad_id).sum().to(summed.dtype), summed.detach()])
    dist.all_reduce(totals)  # [global real tokens, global summed loss]
    count = totals[0].clamp(min=1)
    local = summed / (count / world)
    return local + (totals[1] / count - local).detach()  # the global mean's value, the local form's gradient


class CaptioningLoss(Objective):
    """The captioning half of CoCa: it trains the module's caption decoder, a named head
    (vlp.heads.CaptionDecoder, ``model.heads: {decoder: ...}``).

    The decoder reads the text tower's token states (a vlp.towers.CoCaTextTower: its
    unimodal layers) at positions ``0 .. L-2`` and cross-attends to the image tower's pooler
    queries (a vlp.towers.CoCaImageTower's ``queries``); its logits at position ``t`` predict
    the caption's token ``t + 1`` (teacher forcing, as open_clip's CoCa: ``labels =
    text[:, 1:]``). The loss is the mean cross-entropy over the labels that are not the text
    spec's pad id. Across ranks it is the mean over the tokens of the whole batch
    (``global_caption_loss``: the strategy's gradient average is the one-process gradient, and
    the value logged is the whole batch's mean).

    Reads what its decoder reads (by default ``image.queries`` and ``text.tokens``) and the
    batch field of the decoder's text name (the ids, for the labels). CoCa's total is
    ``contrastive + 2 * captioning`` (Yu et al. 2022, sec. 4: lambda_Con 1, lambda_Cap 2;
    open_clip's defaults): ``weight`` defaults to 2.

    Args:
        weight, name: see Objective.
        decoder: the name of the caption decoder in ``model.heads``.
        label_smoothing: cross-entropy label smoothing (0 as open_clip's CoCaLoss).
        pad_id: the padding id; None (default) = the tokenizer's, adopted from its spec by
            ``bind_text_spec`` (until then 0). A value given here must equal the tokenizer's.

    Generation (greedy, beam, sampling with a key/value cache) is vlp.generation.Captioner.
    """

    default_name = "caption"

    def __init__(self, weight: float = 2.0, name: str | None = None, decoder: str = "decoder",
                 label_smoothing: float = 0.0, pad_id: int | None = None):
        super().__init__(weight, name)
        if not 0.0 <= label_smoothing < 1.0:
            raise VLPError(f"CaptioningLoss label_smoothing must be in [0, 1), got {label_smoothing}")
        self.decoder_name = decoder
        self.heads_used = (decoder,)
        self.label_smoothing = label_smoothing
        self.pad_id_given = pad_id
        self.pad_id = 0 if pad_id is None else pad_id
        self.text_spec: TextSpec | None = None

    @property
    def decoder(self):
        return self.head(self.decoder_name)

    def attach(self, towers) -> None:
        decoder = self.decoder
        self.reads = frozenset({f"{decoder.image}.{decoder.image_part}", f"{decoder.text}.tokens"})
        self.fields = frozenset({decoder.text})

    def bind_text_spec(self, spec: TextSpec) -> None:
        """Adopt the tokenizer's pad id; refuse a pad id that is also the end-of-text id (the
        decoder must learn to stop)."""
        spec.check_part(pad_id=self.pad_id_given)
        if spec.eos_id is None or spec.bos_id is None:
            raise VLPError("captioning needs a tokenizer with start and end-of-text ids")
        if spec.pad_id in (spec.eos_id, spec.bos_id):
            raise VLPError(f"captioning needs a pad id that is neither the start nor the end-of-text id (all "
                           f"{spec.pad_id}): padding is ignored by the loss, the end-of-text token is learnt")
        self.pad_id = spec.pad_id
        self.text_spec = spec

    def forward(self, outputs: dict[str, TowerOutput], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        decoder = self.decoder
        ids = batch[decoder.text]
        image, text = outputs[decoder.image], outputs[decoder.text]
        logits = decoder(text.tokens[:, :-1], *decoder.context(image))
        labels = ids[:, 1:]
        real = labels != self.pad_id
        loss = global_caption_loss(logits, labels, self.pad_id, self.label_smoothing)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == labels) & real).sum() / real.sum().clamp(min=1)
        return loss, {"token_acc": acc}

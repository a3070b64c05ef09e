"""Caption generation with CoCa's parts and a key/value cache: greedy, beam search, sampling.

    captioner = Captioner(module)                       # a VLPModule with a caption decoder head
    out = captioner.generate(images, strategy="beam", num_beams=4)
    texts = tokenizer.decode(out.ids)

Written here rather than borrowed from transformers' generation classes (whose internals
changed under open_clip's ``generate`` twice). Each step feeds only the new token: the text
tower's causal layers and the decoder's self-attention keep their keys and values, and the
decoder's cross-attention keeps those of the image tokens (vlp.towers.cached). Sequences that
end leave the batch. ``use_cache=False`` recomputes every position each step (the reference
the cache is tested against: same tokens, same log-probabilities).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from vlp.errors import VLPError
from vlp.towers.cached import KVCache

Strategy = Literal["greedy", "beam", "sample"]


@dataclass
class Captions:
    """Generated captions of ``B`` images.

    - ``ids [B, T]``: the start id, the caption's ids, the end-of-text id (absent when the
      caption hit ``max_length``), then the pad id.
    - ``token_logprobs [B, T - 1]``: the log-probability of each generated id under the
      processed next-token distribution (repetition penalty and length limits applied,
      before temperature, top-k and top-p); 0 after the end.
    - ``scores [B]``: their sum; for beam search divided by ``length ** length_penalty``
      (the beams' ranking score).
    """

    ids: torch.Tensor
    token_logprobs: torch.Tensor
    scores: torch.Tensor


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``logits [N, V]`` with all but the ``top_k`` largest (0: no limit) and all but the
    smallest set whose probability reaches ``top_p`` (1: no limit) set to -inf."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, index = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # the mass before this token already reaches top_p
        drop[:, 0] = False
        logits = logits.scatter(1, index, ordered.masked_fill(drop, float("-inf")))
    return logits


@contextmanager
def gathered(*modules) -> Iterator[None]:
    """FSDP2-sharded units (those with ``unshard`` / ``reshard``) among ``modules`` hold their
    whole parameters meanwhile. Generation reads the text tower's embeddings (``decode``) and
    the caption decoder outside their units' own forward, whose hooks would gather them;
    blocks that are units of their own are called through ``block(...)`` and gather themselves."""
    units = [m for m in modules if callable(getattr(m, "unshard", None)) and callable(getattr(m, "reshard", None))]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


class _Steps:
    """Next-token logits for the rows being decoded, with or without the cache."""

    def __init__(self, text_tower, decoder, image: torch.Tensor, image_mask: torch.Tensor | None, use_cache: bool):
        self.text_tower, self.decoder = text_tower, decoder
        self.image, self.image_mask = image, image_mask
        self.cache = KVCache() if use_cache else None
        self.seen = 0  # positions in the cache

    def logits(self, seqs: torch.Tensor) -> torch.Tensor:
        """``seqs [A, t]`` (the rows' whole sequences so far) -> ``[A, V]`` float logits of token t."""
        if self.cache is None:
            states = self.text_tower(seqs, tokens=True).tokens
            out = self.decoder(states, self.image, self.image_mask)
        else:
            states = self.text_tower.decode(seqs[:, self.seen:], self.cache)
            out = self.decoder(states, self.image, self.image_mask, cache=self.cache)
            self.image = self.image_mask = None  # its keys and values are in the cache now
            self.seen = seqs.shape[1]
        return out[:, -1].float()

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (in that order) for the next steps."""
        if self.cache is not None:
            self.cache.select(rows)
        if self.image is not None:
            self.image = self.image.index_select(0, rows)
            if self.image_mask is not None:
                self.image_mask = self.image_mask.index_select(0, rows)


class Captioner:
    """Generates captions with the image tower, the CoCa text tower and a module's caption
    decoder (a head: vlp.heads.CaptionDecoder, found by its name in ``model.heads``), using the
    decoder's text spec (the tokenizer's start, end-of-text and pad ids).

    Args:
        module: a VLPModule (the towers run through ``module.run_tower``).
        head: the decoder's name in ``model.heads``.
    """

    def __init__(self, module, head: str = "decoder"):
        heads = getattr(module, "heads", None) or {}
        if head not in heads:
            raise VLPError(f"captioning needs a model with a caption decoder named {head!r} in model.heads; this one "
                           f"has {sorted(heads) or 'no heads'} (the coca_* recipes train one)")
        self.module, self.decoder = module, heads[head]
        self.spec = self.decoder.text_spec
        if self.spec is None:
            raise VLPError("the caption decoder has no text spec: bind the tokenizer's "
                           "(vlp.data.text_spec.bind_parts(module, tokenizer.spec))")
        self.text_tower = module.towers[module.share.get(self.decoder.text, self.decoder.text)]
        if not callable(getattr(self.text_tower, "decode", None)):
            raise VLPError(f"captioning needs a text tower that decodes step by step (vlp.towers.CoCaTextTower), "
                           f"not {type(self.text_tower).__name__}")
        self.context_length = self.text_tower.context_length

    def generate(self, images: torch.Tensor, strategy: Strategy = "greedy", *, max_length: int | None = None,
                 min_length: int = 0, num_beams: int = 4, length_penalty: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, temperature: float = 1.0, repetition_penalty: float = 1.0,
                 use_cache: bool = True, fixed_steps: bool = False,
                 generator: torch.Generator | None = None) -> Captions:
        """Captions of ``images [B, 3, H, W]`` (the module in eval mode while it runs).

        Args:
            strategy: ``greedy`` (the most likely token), ``beam`` (beam search over
                ``num_beams`` beams, finished captions ranked by ``sum log p / length **
                length_penalty``), or ``sample`` (from ``softmax(logits / temperature)``
                limited to ``top_k`` and ``top_p``).
            max_length: most tokens after the start token, the end token included; None =
                the text tower's context_length - 1 (the longest caption of training).
            min_length: fewest caption tokens before the end token may come.
            repetition_penalty: CTRL's penalty (Keskar et al. 2019) on ids already in the
                sequence: a positive logit is divided by it, a negative one multiplied.
            use_cache: the key/value cache (False: recompute every position each step).
            fixed_steps: run exactly ``max_length`` decoder steps even after every caption
                ended (equal forward passes on every rank, for sharded parameters).
            generator: the random generator of ``sample``.

        The pad and start ids are never generated (padding is not a token).
        """
        max_length = self.context_length - 1 if max_length is None else max_length
        if not 1 <= max_length <= self.context_length:
            raise VLPError(f"max_length must be in [1, {self.context_length}] (the text tower's context_length), "
                           f"got {max_length}")
        if not 0 <= min_length < max_length:
            raise VLPError(f"min_length must be in [0, max_length), got {min_length} (max_length {max_length})")
        if strategy not in ("greedy", "beam", "sample"):
            raise VLPError(f"unknown generation strategy {strategy!r}: expected greedy, beam or sample")
        if num_beams < 1 or temperature <= 0 or not 0 < top_p <= 1 or top_k < 0 or repetition_penalty <= 0:
            raise VLPError("generation needs num_beams >= 1, temperature > 0, 0 < top_p <= 1, top_k >= 0 and "
                           "repetition_penalty > 0")
        module = self.module
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), gathered(self.text_tower, self.decoder):
                context, mask = self.decoder.context(module.run_tower(self.decoder.image, images, tokens=True))
                mask = None if mask is None or bool(mask.all()) else mask
                settings = {"max_length": max_length, "min_length": min_length,
                            "repetition_penalty": repetition_penalty, "fixed_steps": fixed_steps}
                if strategy == "beam":
                    steps = _Steps(self.text_tower, self.decoder, context.repeat_interleave(num_beams, 0),
                                   None if mask is None else mask.repeat_interleave(num_beams, 0), use_cache)
                    return self._beam(steps, images.shape[0], num_beams, length_penalty, **settings)
                steps = _Steps(self.text_tower, self.decoder, context, mask, use_cache)
                return self._sample(steps, images.shape[0], strategy == "greedy", top_k, top_p, temperature,
                                    generator, **settings)
        finally:
            module.train(was_training)

    def log_likelihood(self, images: torch.Tensor, texts: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """``[B, P]``: the log-probability the decoder gives each of ``P`` texts (the tokenizer's
        ids ``[P, L]``: start id, text, end-of-text id, padding) as the caption of each of ``B``
        images: the sum over the text's tokens after the start token, the end-of-text token
        included, padding excluded (CapPa's zero-shot scoring, Tschannen et al. 2023).

        The text tower runs once per text (it does not see the image); the decoder runs on
        every (image, text) pair, ``chunk`` pairs at a time (the same number of passes for
        equal shapes, as sharded parameters need on every rank)."""
        spec = self.spec
        if texts.dim() != 2 or texts.shape[1] < 2:
            raise VLPError(f"log_likelihood needs token ids [P, L] with L >= 2, got {tuple(texts.shape)}")
        module = self.module
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), gathered(self.text_tower, self.decoder):
                device = next(self.decoder.parameters()).device
                texts = texts.to(device)
                used = int((texts != spec.pad_id).sum(1).max())  # the longest text; the rest is padding
                texts = texts[:, : max(used, 2)]
                states = self.text_tower(texts, tokens=True).tokens[:, :-1]  # [P, l-1, W]
                labels = texts[:, 1:]
                real = labels != spec.pad_id
                tokens, mask = self.decoder.context(module.run_tower(self.decoder.image, images, tokens=True))
                mask = None if mask is None or bool(mask.all()) else mask
                b, p = images.shape[0], texts.shape[0]
                pairs = torch.arange(b * p, device=device)
                scores = torch.empty(b * p, device=device)
                for part in pairs.split(chunk):
                    i, t = part // p, part % p
                    logits = self.decoder(states[t], tokens[i], None if mask is None else mask[i])
                    logp = logits.float().log_softmax(-1).gather(2, labels[t, :, None]).squeeze(2)
                    scores[part] = (logp * real[t]).sum(1)
                return scores.view(b, p)
        finally:
            module.train(was_training)

    def _processed(self, logits: torch.Tensor, seqs: torch.Tensor, step: int, min_length: int,
                  repetition_penalty: float) -> torch.Tensor:
        """The processed logits ``[A, V]`` of step ``step`` (0 = the first token after start)."""
        spec = self.spec
        if repetition_penalty != 1.0 and seqs.numel():
            seen = logits.gather(1, seqs)
            logits = logits.scatter(1, seqs, torch.where(seen < 0, seen * repetition_penalty,
                                                         seen / repetition_penalty))
        logits[:, spec.pad_id] = float("-inf")
        if spec.bos_id != spec.eos_id:  # one id for both (GPT-2): it may end the caption
            logits[:, spec.bos_id] = float("-inf")
        if step < min_length:
            logits[:, spec.eos_id] = float("-inf")
        return logits

    def _sample(self, steps: _Steps, batch: int, greedy: bool, top_k: int, top_p: float, temperature: float,
                generator, max_length: int, min_length: int, repetition_penalty: float,
                fixed_steps: bool) -> Captions:
        spec = self.spec
        device = next(self.decoder.parameters()).device
        ids = torch.full((batch, max_length + 1), spec.pad_id, dtype=torch.long, device=device)
        ids[:, 0] = spec.bos_id
        logps = torch.zeros(batch, max_length, device=device)
        alive = torch.arange(batch, device=device)
        for step in range(max_length):
            if not len(alive) and not fixed_steps:
                break
            seqs = ids[alive, : step + 1]
            logits = self._processed(steps.logits(seqs), seqs, step, min_length, repetition_penalty)
            if not len(alive):
                continue
            logp = logits.log_softmax(-1)
            if greedy:
                token = logits.argmax(-1)
            else:
                probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            ids[alive, step + 1] = token
            logps[alive, step] = logp.gather(1, token[:, None]).squeeze(1)
            ended = token == spec.eos_id
            if ended.any():
                keep = (~ended).nonzero().flatten()
                alive = alive[keep]
                steps.select(keep)
        return _trimmed(ids, logps, logps.sum(1), spec.pad_id)

    def _beam(self, steps: _Steps, batch: int, beams: int, length_penalty: float, max_length: int,
              min_length: int, repetition_penalty: float, fixed_steps: bool) -> Captions:
        spec = self.spec
        device = next(self.decoder.parameters()).device
        seqs = torch.full((batch * beams, 1), spec.bos_id, dtype=torch.long, device=device)
        seq_logps = torch.zeros(batch * beams, 0, device=device)
        scores = torch.full((batch, beams), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one start beam per image: the first step picks distinct tokens
        items = list(range(batch))  # images still searched, in the order of the rows
        finished: list[list[tuple[float, list[int], list[float]]]] = [[] for _ in range(batch)]

        def finish(b: int, norm: float, ids: list[int], lps: list[float]) -> None:
            finished[b].append((norm, ids, lps))
            finished[b].sort(key=lambda h: -h[0])
            del finished[b][beams:]

        for step in range(max_length):
            if not items:
                if not fixed_steps:
                    break
                seqs = torch.cat([seqs, seqs.new_full((0, 1), spec.pad_id)], dim=1)
                steps.logits(seqs)  # the same forward passes on every rank
                continue
            logits = self._processed(steps.logits(seqs), seqs, step, min_length, repetition_penalty)
            logp = logits.log_softmax(-1)  # [A * K, V]
            vocab = logp.shape[-1]
            total = (scores.view(-1, 1) + logp).view(len(items), beams * vocab)
            top_scores, top_index = total.topk(min(2 * beams, total.shape[1]), dim=1)
            rows, tokens, new_scores, kept = [], [], [], []
            length = step + 1  # tokens generated, this one included
            for a, b in enumerate(items):
                chosen = []
                for rank, (s, index) in enumerate(zip(top_scores[a].tolist(), top_index[a].tolist())):
                    if s == float("-inf"):
                        break
                    row, token = a * beams + index // vocab, index % vocab
                    if token == spec.eos_id:
                        if rank < beams:  # an ended beam counts only among the best ones
                            finish(b, s / length**length_penalty, [*seqs[row].tolist(), token],
                                   [*seq_logps[row].tolist(), float(logp[row, token])])
                        continue
                    chosen.append((row, token, s))
                    if len(chosen) == beams:
                        break
                best_alive = chosen[0][2] / length**length_penalty if chosen else float("-inf")
                if step == max_length - 1 or not chosen or (
                        len(finished[b]) == beams and finished[b][-1][0] >= best_alive):
                    for row, token, s in chosen:  # out of length: the live beams end here
                        if step == max_length - 1:
                            finish(b, s / length**length_penalty, [*seqs[row].tolist(), token],
                                   [*seq_logps[row].tolist(), float(logp[row, token])])
                    continue
                chosen += [chosen[-1][:2] + (float("-inf"),)] * (beams - len(chosen))  # too few: dead fillers
                kept.append(b)
                for row, token, s in chosen:
                    rows.append(row)
                    tokens.append(token)
                    new_scores.append(s)
            if not kept:
                items = []
                seqs = seqs[:0]
                steps.select(torch.zeros(0, dtype=torch.long, device=device))
                continue
            index = torch.tensor(rows, device=device)
            token_t = torch.tensor(tokens, device=device)
            seq_logps = torch.cat([seq_logps[index], logp[index, token_t][:, None]], dim=1)
            seqs = torch.cat([seqs[index], token_t[:, None]], dim=1)
            scores = torch.tensor(new_scores, device=device).view(len(kept), beams)
            items = kept
            steps.select(index)
        width = max_length + 1
        ids = torch.full((batch, width), spec.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros(batch, max_length, device=device)
        best = torch.zeros(batch, device=device)
        for b, hyps in enumerate(finished):
            norm, seq, lps = hyps[0]
            ids[b, : len(seq)] = torch.tensor(seq, device=device)
            logps[b, : len(lps)] = torch.tensor(lps, device=device)
            best[b] = norm
        return _trimmed(ids, logps, best, spec.pad_id)


def _trimmed(ids: torch.Tensor, logps: torch.Tensor, scores: torch.Tensor, pad_id: int) -> Captions:
    """Drop the columns that are padding in every row."""
    used = int((ids != pad_id).sum(1).max()) if ids.numel() else 1
    return Captions(ids[:, :used], logps[:, : max(used - 1, 0)], scores)


__all__ = ["Captioner", "Captions", "filter_logits"]

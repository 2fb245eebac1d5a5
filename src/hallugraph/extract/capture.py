"""Trace extraction: the model answers, then one "final photo" of prompt + answer is kept.

A trace holds, for every layer, the hidden states ``[seq, hidden]`` and attention maps
``[heads, seq, seq]`` of the whole sequence (prompt + answer), the token ids and their strings,
and for every answer position the log-prob of the chosen token and the entropy of the
next-token distribution.

Two capture modes give the same photo (tests check both against an independent forward pass):

``forward``
    After generation, ONE teacher-forced forward pass over prompt + answer. Used for beam
    search and for given (teacher-forced) answers, and available everywhere.
``incremental`` (default for greedy decoding)
    Under a causal mask the state of position ``i`` depends only on tokens ``<= i``, so the
    teacher-forced pass computes exactly what generation already computed: the prefill's
    rows for the prompt and one row per decode step for each fed answer token. We keep those
    rows (``generate(output_hidden_states=True)`` returns them step by step: step 0 holds the
    whole prompt, step ``t`` the token chosen at ``t - 1``) and feed the last chosen token once
    more, instead of recomputing the whole sequence. Reading only ``hidden_states[-1]`` of
    ``generate`` — the newest token — is the bug this avoids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from hallugraph.extract.decoding import PrefixDecoder, supports, token_stats
from hallugraph.extract.inputs import Prepared, eos_ids, iter_batches
from hallugraph.models import LoadedModel

#: Prompt tokens of a typical question without context (TriviaQA's 99th percentile is 87,
#: with the chat template): the default token budget of a batch is ``batch_size`` prompts of
#: this length plus their answers, so batches of ordinary prompts are not cut.
TYPICAL_PROMPT_TOKENS = 96


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are produced and captured."""

    max_new_tokens: int = 64
    num_beams: int = 1
    early_stopping: bool = True
    batch_size: int = 32
    batch_tokens: int | None = None
    """Token budget of a batch (:func:`hallugraph.extract.inputs.iter_batches`): a batch of long
    prompts is cut so that its size x longest sequence stays within it, and its attention cells
    within those of ``batch_size`` sequences of ``batch_tokens / batch_size`` tokens. ``None``:
    ``batch_size * (TYPICAL_PROMPT_TOKENS + max_new_tokens)``; 0: no budget (chunks of
    ``batch_size``)."""
    capture: str = "auto"
    """``auto`` (incremental for greedy, forward otherwise), ``incremental`` or ``forward``."""
    template: str | None = None
    decoder: str = "auto"
    """Greedy incremental decoding by ``hallugraph``'s prefix-cached decoder (Llama family;
    ``auto`` picks it when it supports the model) or by ``transformers``' ``generate``."""

    def capture_mode(self) -> str:
        if self.capture == "auto":
            return "incremental" if self.num_beams == 1 else "forward"
        if self.capture == "incremental" and self.num_beams != 1:
            raise ValueError("incremental capture needs greedy decoding (--num-beams 1)")
        if self.capture not in ("incremental", "forward"):
            raise ValueError(f"unknown capture mode {self.capture!r}")
        if self.decoder not in ("auto", "hallugraph", "transformers"):
            raise ValueError(f"unknown decoder {self.decoder!r}")
        return self.capture

    def token_budget(self) -> int:
        """The batch token budget in force (0: none)."""
        if self.batch_tokens is None:
            return self.batch_size * (TYPICAL_PROMPT_TOKENS + self.max_new_tokens)
        if self.batch_tokens < 0:
            raise ValueError(
                f"--batch-tokens must be 0 (no budget) or more, not {self.batch_tokens}"
            )
        return self.batch_tokens

    def batches(self, prepared: Sequence[Prepared]) -> Iterator[list[Prepared]]:
        """``prepared`` cut into batches (:func:`hallugraph.extract.inputs.iter_batches`)."""
        return iter_batches(prepared, self.batch_size, self.token_budget(), self.max_new_tokens)

    def to_dict(self) -> dict[str, Any]:
        """The settings, with the token budget in force (not ``None``)."""
        return {**asdict(self), "batch_tokens": self.token_budget()}


@dataclass
class Trace:
    """One captured trace: metadata plus fp32 tensors of rows ``row_start..S-1``.

    Rows before ``row_start`` (a prompt prefix shared by every trace) live in
    ``prefix_hidden``/``prefix_attentions``; :meth:`full` puts the whole photo back together.
    """

    meta: dict[str, Any]
    hidden_states: torch.Tensor
    """``[num_layers + 1, S - row_start, hidden]`` (index 0 = embeddings, last = after the
    final norm)."""
    attentions: torch.Tensor
    """Lower-triangular attention rows ``row_start..S-1``, packed row-major:
    ``[num_layers, heads, S(S+1)/2 - row_start(row_start+1)/2]``."""
    row_start: int = 0
    prefix_hidden: torch.Tensor | None = None
    prefix_attentions: torch.Tensor | None = None

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole sequence: ``hidden_states [L+1, S, H]``, ``attentions [L, heads, S, S]``."""
        hidden, packed = self.hidden_states, self.attentions
        if self.row_start:
            hidden = torch.cat([self.prefix_hidden, hidden], dim=1)
            packed = torch.cat([self.prefix_attentions, packed], dim=-1)
        S = hidden.shape[1]
        r, c = torch.tril_indices(S, S)
        attn = torch.zeros(packed.shape[:-1] + (S, S), dtype=packed.dtype)
        attn[..., r, c] = packed
        return hidden, attn


def pack_rows(attn: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Rows ``start..S-1`` of the lower triangle of ``[..., S, S]``, flattened row-major."""
    S = attn.shape[-1]
    r, c = torch.tril_indices(S, S)
    keep = r >= start
    return attn[..., r[keep], c[keep]]


def _cut_at_eos(tokens: list[int], eos: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], True
    return tokens, False


def _left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _generate(lm: LoadedModel, batch: Sequence[Prepared], gs: GenerationSettings, capture: bool):
    ids, mask = _left_pad([p.prompt_ids for p in batch], lm.tokenizer.pad_token_id, lm.device)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=gs.max_new_tokens,
        do_sample=False,
        num_beams=gs.num_beams,
        return_dict_in_generate=True,
        pad_token_id=lm.tokenizer.pad_token_id,
        eos_token_id=eos_ids(lm),
        temperature=None,
        top_p=None,
        top_k=None,
    )
    if gs.num_beams > 1:
        kwargs["early_stopping"] = gs.early_stopping
    if capture:
        kwargs.update(output_hidden_states=True, output_attentions=True, output_logits=True)
    out = lm.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return ids, mask, out


def _capture_incremental(
    lm: LoadedModel, batch: Sequence[Prepared], gs: GenerationSettings
) -> list[Trace]:
    ids, mask, out = _generate(lm, batch, gs, capture=True)
    P = ids.shape[1]
    gen = out.sequences[:, P:]
    T = gen.shape[1]
    eos = set(eos_ids(lm))
    answers = [_cut_at_eos(gen[b].tolist(), eos) for b in range(len(batch))]
    # Feed the last chosen token once more: its row is the only one generation never computed
    # for sequences that were still running at the last step.
    need_extra = any(len(a) == T for a, _ in answers)
    extra = None
    if need_extra:
        full_mask = torch.cat([mask, torch.ones_like(gen)], dim=1)
        extra = lm.model.model(
            input_ids=gen[:, -1:],
            attention_mask=full_mask,
            position_ids=_positions(full_mask)[:, -1:],
            past_key_values=out.past_key_values,
            output_hidden_states=True,
            output_attentions=True,
            use_cache=True,
        )
    # step 0: prompt; step t >= 1: the token chosen at step t - 1
    hs0 = torch.stack(out.hidden_states[0])  # [L+1, B, P, H]
    hs_steps = [torch.stack(h)[:, :, 0] for h in out.hidden_states[1:]]  # each [L+1, B, H]
    at0 = torch.stack(out.attentions[0])  # [L, B, heads, P, P]
    at_steps = [torch.stack(a)[:, :, :, 0] for a in out.attentions[1:]]  # [L, B, heads, P+t]
    if extra is not None:
        hs_steps.append(torch.stack(extra.hidden_states)[:, :, 0])
        at_steps.append(torch.stack(extra.attentions)[:, :, :, 0])
    traces = []
    for b, p in enumerate(batch):
        ans, finished = answers[b]
        n, plen = len(ans), len(p.prompt_ids)
        start = P - plen
        S = plen + n
        hidden = torch.cat([hs0[:, b, start:]] + [hs_steps[t][:, b, None] for t in range(n)], dim=1)
        attn = torch.zeros((at0.shape[0], at0.shape[2], S, S), dtype=at0.dtype)
        attn[:, :, :plen, :plen] = at0[:, b, :, start:, start:]
        for t in range(n):
            attn[:, :, plen + t, : plen + t + 1] = at_steps[t][:, b, :, start : P + t + 1]
        logits = torch.stack([out.logits[t][b] for t in range(n)])
        _, lp, ent = token_stats(logits, torch.tensor(ans))
        packed = pack_rows(attn)
        traces.append(_make_trace(lm, p, ans, finished, hidden, packed, lp, ent, "generated"))
    return traces


def _capture_forward(
    lm: LoadedModel,
    batch: Sequence[Prepared],
    answers: Sequence[tuple[list[int], bool]],
    source: str,
) -> list[Trace]:
    seqs = [p.prompt_ids + a for p, (a, _) in zip(batch, answers, strict=True)]
    ids, mask = _left_pad(seqs, lm.tokenizer.pad_token_id, lm.device)
    out = lm.model.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=_positions(mask),
        output_hidden_states=True,
        output_attentions=True,
        use_cache=False,
    )
    hs = torch.stack(out.hidden_states)  # [L+1, B, W, H]
    at = torch.stack(out.attentions)  # [L, B, heads, W, W]
    W = ids.shape[1]
    traces = []
    for b, p in enumerate(batch):
        ans, finished = answers[b]
        S = len(seqs[b])
        start = W - S
        hidden = hs[:, b, start:]
        attn = torch.tril(at[:, b, :, start:, start:])
        plen = len(p.prompt_ids)
        # logits at position i predict token i + 1: the answer's tokens come from plen-1..S-2
        logits = lm.model.lm_head(hidden[-1, plen - 1 : S - 1])
        _, lp, ent = token_stats(logits, torch.tensor(ans, device=logits.device))
        packed = pack_rows(attn)
        traces.append(_make_trace(lm, p, ans, finished, hidden, packed, lp, ent, source))
    return traces


def _make_trace(
    lm, p: Prepared, ans, finished, hidden, packed, lp, ent, source: str, **rows: Any
) -> Trace:
    tok = lm.tokenizer
    tokens = p.prompt_ids + list(ans)
    ex = p.example
    meta = {
        "question_id": ex.id,
        "question": ex.question,
        "references": list(ex.references),
        "incorrect": list(ex.incorrect),
        "context": ex.context,
        "prompt": p.prompt,
        "generated_answer_clean": tok.decode(ans, skip_special_tokens=True).strip(),
        "answer_source": source,
        "finished": finished,
        "tokens": tokens,
        "tokens_decoded": tok.batch_decode([[t] for t in tokens]),
        "seq_len": len(tokens),
        "prompt_len": len(p.prompt_ids),
        "answer_len": len(ans),
        "context_span": list(p.context_span) if p.context_span else None,
        "token_logprobs": lp,
        "token_entropy": ent,
        "example_meta": dict(ex.meta),
    }
    return Trace(meta, hidden.detach().float().cpu(), packed.detach().float().cpu(), **rows)


def _capture_decoder(
    lm: LoadedModel,
    batch: Sequence[Prepared],
    gs: GenerationSettings,
    prefix: Sequence[int],
    answers: Sequence[tuple[list[int], bool]] | None = None,
    source: str = "generated",
) -> list[Trace]:
    """Capture with the prefix-cached decoder: greedy answers, or ``answers`` (given, or
    generated by beam search) teacher-forced: one pass over prompt + answer, the shared
    prefix computed once."""
    dec = _decoder(lm, prefix)
    if answers is None:
        decoded = dec.decode(
            [p.prompt_ids for p in batch],
            gs.max_new_tokens,
            eos_ids(lm),
            lm.tokenizer.pad_token_id,
        )
        finished = [d.finished for d in decoded]
    else:
        seqs = [p.prompt_ids + a for p, (a, _) in zip(batch, answers, strict=True)]
        decoded = dec.teacher_force(seqs, [len(p.prompt_ids) for p in batch])
        finished = [f for _, f in answers]
    return [
        _make_trace(
            lm,
            p,
            d.answer,
            fin,
            d.hidden_states,
            d.attentions,
            d.logprobs,
            d.entropy,
            source,
            row_start=dec.p,
            prefix_hidden=dec.prefix_hidden,
            prefix_attentions=dec.prefix_attn_packed,
        )
        for p, d, fin in zip(batch, decoded, finished, strict=True)
    ]


def _decoder(lm: LoadedModel, prefix: Sequence[int]) -> PrefixDecoder:
    cache = lm.__dict__.setdefault("_decoders", {})
    key = tuple(prefix)
    if key not in cache:
        cache.clear()
        cache[key] = PrefixDecoder(lm.model, prefix)
    return cache[key]


@torch.inference_mode()
def prefix_rows(
    lm: LoadedModel, prefix: Sequence[int], gs: GenerationSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the prompt prefix every trace shares, computed on their own (under a causal
    mask they do not depend on what follows): fp32 ``hidden [L+1, p, H]`` and packed lower
    triangle ``attentions [L, heads, p(p+1)/2]``. With the prefix-cached decoder these are the
    very rows it computes once and every trace reuses."""
    if gs.decoder == "hallugraph" or (gs.decoder == "auto" and supports(lm.model)):
        dec = _decoder(lm, prefix)
        return dec.prefix_hidden, dec.prefix_attn_packed
    out = lm.model.model(
        input_ids=torch.tensor([list(prefix)], device=lm.device),
        output_hidden_states=True,
        output_attentions=True,
        use_cache=False,
    )
    hidden = torch.stack(out.hidden_states)[:, 0]
    attn = torch.stack(out.attentions)[:, 0]
    return hidden.float().cpu(), pack_rows(attn).float().cpu()


@torch.inference_mode()
def capture_batch(
    lm: LoadedModel, batch: Sequence[Prepared], gs: GenerationSettings, prefix: Sequence[int] = ()
) -> list[Trace]:
    """Answer (or teacher-force the given answers of) one batch and capture its traces.

    ``prefix`` is the token prefix every prompt of the run shares; the prefix-cached decoder
    computes it once.
    """
    forced = [p.answer_ids is not None for p in batch]
    if any(forced) and not all(forced):
        raise ValueError("a batch mixes given answers and generated ones")
    use_ours = gs.decoder == "hallugraph" or (gs.decoder == "auto" and supports(lm.model))
    p = len(prefix)
    if any(len(b.prompt_ids) <= p or b.prompt_ids[:p] != list(prefix) for b in batch):
        prefix = ()
    if all(forced):
        answers = [_cut_at_eos(list(p.answer_ids or []), set(eos_ids(lm))) for p in batch]
        if use_ours:
            return _capture_decoder(lm, batch, gs, prefix, answers, "given")
        return _capture_forward(lm, batch, answers, "given")
    if gs.capture_mode() == "incremental":
        if use_ours:
            return _capture_decoder(lm, batch, gs, prefix)
        return _capture_incremental(lm, batch, gs)
    ids, _, out = _generate(lm, batch, gs, capture=False)
    eos = set(eos_ids(lm))
    answers = [_cut_at_eos(s[ids.shape[1] :].tolist(), eos) for s in out.sequences]
    if use_ours:
        return _capture_decoder(lm, batch, gs, prefix, answers, "generated")
    return _capture_forward(lm, batch, answers, "generated")

"""Examples turned into model input: the rendered prompt, its tokens and the context's token span
(:class:`Prepared`), batched by length."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hallugraph.data import Example
from hallugraph.models import LoadedModel
from hallugraph.prompts import build_prompt, render_prompt


@dataclass
class Prepared:
    """One example turned into model input."""

    example: Example
    prompt: str
    prompt_ids: list[int]
    context_span: tuple[int, int] | None
    answer_ids: list[int] | None = None
    """Given answer tokens (teacher-forced), ``None`` when the model generates."""


def prepare(
    lm: LoadedModel, examples: Sequence[Example], template: str | None = None
) -> list[Prepared]:
    """Render prompts, tokenize them and locate the context's token span."""
    tok = lm.tokenizer
    add_special = not lm.use_chat_template
    out = []
    for ex in examples:
        user_text, ctx_chars = build_prompt(ex, template)
        prompt = render_prompt(lm, user_text)
        enc = tok(prompt, add_special_tokens=add_special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        span = None
        if ctx_chars is not None:
            base = prompt.find(user_text)
            cs, ce = base + ctx_chars[0], base + ctx_chars[1]
            inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > cs and s < ce]
            if inside:
                span = (inside[0], inside[-1] + 1)
        answer_ids = None
        if ex.answer is not None:
            answer_ids = list(tok(ex.answer, add_special_tokens=False)["input_ids"])
            if tok.eos_token_id is not None:
                answer_ids.append(int(eos_ids(lm)[0]))
        out.append(Prepared(ex, prompt, ids, span, answer_ids))
    return out


def shared_prefix_len(prepared: Sequence[Prepared]) -> int:
    """Length of the token prefix common to every prompt (the chat header and instruction)."""
    if not prepared:
        return 0
    first = prepared[0].prompt_ids
    n = min(len(p.prompt_ids) for p in prepared)
    k = 0
    while k < n and all(p.prompt_ids[k] == first[k] for p in prepared):
        k += 1
    return k


def eos_ids(lm: LoadedModel) -> list[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


def sequence_len(p: Prepared, max_new_tokens: int) -> int:
    """Tokens a batch computes for ``p``: its prompt, then its given answer or, when the model
    generates, ``max_new_tokens``."""
    return len(p.prompt_ids) + (len(p.answer_ids) if p.answer_ids is not None else max_new_tokens)


def iter_batches(
    prepared: Sequence[Prepared],
    batch_size: int,
    max_tokens: int | None = None,
    max_new_tokens: int = 0,
) -> Iterator[list[Prepared]]:
    """Batches of similar prompt length (less padding); the caller restores the order.

    The prompts are sorted by length (ties in input order), then cut greedily: a batch takes
    the next prompt while it holds at most ``batch_size`` prompts and, when ``max_tokens`` is
    given, with ``S`` its longest :func:`sequence_len` and ``B`` its size:

    * ``B * S <= max_tokens`` (tokens: the KV cache, hidden states, activations), and
    * ``B * S**2 * batch_size <= max_tokens**2``: no more attention cells (the stored maps,
      the first pass's per-layer maps, all quadratic in the length) than ``batch_size``
      sequences of ``max_tokens / batch_size`` tokens.

    A prompt over the budget on its own gets a batch of its own. A pure function of
    ``prepared`` (the same prompts give the same batches, in the same order, whichever worker
    computes them); without ``max_tokens`` (or with 0), chunks of ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    order = sorted(range(len(prepared)), key=lambda i: len(prepared[i].prompt_ids))
    batch: list[Prepared] = []
    longest = 0
    for i in order:
        p = prepared[i]
        s = max(longest, sequence_len(p, max_new_tokens))
        b = len(batch) + 1
        fits = b <= batch_size and (
            not max_tokens or (b * s <= max_tokens and b * s * s * batch_size <= max_tokens**2)
        )
        if batch and not fits:
            yield batch
            batch, s = [], sequence_len(p, max_new_tokens)
        batch.append(p)
        longest = s
    if batch:
        yield batch

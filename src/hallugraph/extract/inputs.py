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


def iter_batches(prepared: Sequence[Prepared], batch_size: int) -> Iterator[list[Prepared]]:
    """Batches of similar prompt length (less padding); the caller restores the order."""
    order = sorted(range(len(prepared)), key=lambda i: len(prepared[i].prompt_ids))
    for k in range(0, len(order), batch_size):
        yield [prepared[i] for i in order[k : k + batch_size]]

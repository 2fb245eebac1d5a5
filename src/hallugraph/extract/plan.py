"""Checks before any compute: the model's context window and the prompts that would not fit it."""

from __future__ import annotations

from collections.abc import Sequence

from hallugraph.extract.inputs import (
    Prepared,
)
from hallugraph.models import LoadedModel


def context_window(lm: LoadedModel) -> int | None:
    """The model's maximum sequence length (``max_position_embeddings``), when it has one."""
    n = getattr(lm.model.config, "max_position_embeddings", None)
    return int(n) if n else None


def prompt_problems(
    lm: LoadedModel,
    prepared: Sequence[Prepared],
    max_new_tokens: int,
    max_prompt_tokens: int | None = None,
) -> dict[str, str]:
    """``{example id: why}`` for the examples whose prompt is longer than ``max_prompt_tokens``
    or whose prompt + answer (given, else ``max_new_tokens``) passes the context window.
    Tokenized lengths only: no model compute."""
    window = context_window(lm)
    out: dict[str, str] = {}
    for p in prepared:
        n = len(p.prompt_ids)
        answer = len(p.answer_ids) if p.answer_ids is not None else max_new_tokens
        if max_prompt_tokens is not None and n > max_prompt_tokens:
            out[p.example.id] = (
                f"prompt of {n} tokens is over --max-prompt-tokens {max_prompt_tokens} by "
                f"{n - max_prompt_tokens}"
            )
        elif window is not None and n + answer > window:
            what = "given answer" if p.answer_ids is not None else "--max-new-tokens"
            out[p.example.id] = (
                f"prompt of {n} tokens + {answer} ({what}) is over the model's context window "
                f"of {window} by {n + answer - window}"
            )
    return out

"""The role of every token of a trace (system, prompt, context, question, answer), found from the
decoded tokens and the stored context."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass


ROLES: tuple[str, ...] = ("system", "prompt", "context", "question", "answer")
"""Node roles; a node's ``role_id`` is the index of its role here."""
ROLE_IDS: dict[str, int] = {r: i for i, r in enumerate(ROLES)}

SYSTEM_MARKERS: tuple[tuple[str, str], ...] = (
    ("<|im_start|>system", "<|im_end|>"),
    ("<|start_header_id|>system<|end_header_id|>", "<|eot_id|>"),
    ("<<SYS>>", "<</SYS>>"),
    ("<|system|>", "<|end|>"),
)
"""(opening, closing) markers of a chat template's system turn, whitespace removed."""

HeadsMode = Literal["mean", "all"]


# ---------------------------------------------------------------------------------------------
# roles


def _compact(pieces: Sequence[str]) -> tuple[str, np.ndarray]:
    """The concatenated pieces without whitespace, and the piece each character comes from."""
    chars: list[str] = []
    owner: list[int] = []
    for k, piece in enumerate(pieces):
        for ch in piece:
            if not ch.isspace():
                chars.append(ch)
                owner.append(k)
    return "".join(chars), np.asarray(owner, dtype=np.int64)


def _needle_pattern(text: str) -> re.Pattern[str] | None:
    """Regex for ``text`` with whitespace removed and each non-ASCII run matching anything."""
    compact = "".join(ch for ch in text if not ch.isspace())
    if not any(ch.isascii() for ch in compact):
        return re.compile(re.escape(compact)) if compact else None
    parts = re.split(r"([^\x00-\x7f]+)", compact)
    regex = "".join((".+?" if i % 2 else re.escape(p)) for i, p in enumerate(parts) if p or i % 2)
    return re.compile(regex, re.DOTALL)


def _find_span(compact: str, owner: np.ndarray, needle: str | None) -> tuple[int, int] | None:
    """Token span ``[start, end)`` of the last match of ``needle`` in the compact text."""
    if not needle or not compact:
        return None
    pattern = _needle_pattern(needle)
    if pattern is None:
        return None
    last = None
    for m in pattern.finditer(compact):
        if m.end() > m.start():
            last = m
    if last is None:
        return None
    return int(owner[last.start()]), int(owner[last.end() - 1]) + 1


def _system_span(compact: str, owner: np.ndarray) -> tuple[int, int] | None:
    for opening, closing in SYSTEM_MARKERS:
        start = compact.find(opening)
        if start < 0:
            continue
        end = compact.find(closing, start + len(opening))
        if end < 0:
            continue
        return int(owner[start]), int(owner[end + len(closing) - 1]) + 1
    return None


def token_roles(trace: Mapping[str, Any]) -> np.ndarray:
    """Role id (index into :data:`ROLES`) of every token of a trace, ``[S]`` int64.

    Reads ``tokens`` (or ``seq_len``), ``prompt_len``, ``context_span``, ``tokens_decoded`` and
    ``question``; the rule is in the module docstring.
    """
    S = int(trace["seq_len"]) if "seq_len" in trace else len(trace["tokens"])
    P = min(int(trace["prompt_len"]), S)
    roles = np.full(S, ROLE_IDS["prompt"], dtype=np.int64)
    decoded = trace.get("tokens_decoded")
    pieces = [str(p) for p in (decoded if decoded is not None else [])][:P]
    if len(pieces) == P and P:
        compact, owner = _compact(pieces)
        sys_span = _system_span(compact, owner)
        if sys_span:
            roles[sys_span[0] : sys_span[1]] = ROLE_IDS["system"]
        q_span = _find_span(compact, owner, trace.get("question"))
        if q_span:
            roles[q_span[0] : q_span[1]] = ROLE_IDS["question"]
    span = trace.get("context_span")
    if span:
        start, end = max(int(span[0]), 0), min(int(span[1]), P)
        if end > start:
            roles[start:end] = ROLE_IDS["context"]
    roles[P:] = ROLE_IDS["answer"]
    return roles


# ---------------------------------------------------------------------------------------------
# graphs

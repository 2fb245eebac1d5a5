"""Answer normalization (SQuAD-style, plus Unicode punctuation and separators), the match rule and
ROUGE-L."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

HALLUCINATED = 1
NOT_HALLUCINATED = 0
METHODS = ("rouge", "embedding")
SPOT_CHECK = "labels_spot_check.jsonl"

RULE_MATCH = "match"
RULE_GIVEN = "given_label"
RULE_TRUTHFULQA = "truthfulqa_{method}"

#: Digits kept in the stored scores (labels are decided on the exact values).
DIGITS = 4

_ARTICLES = frozenset({"a", "an", "the"})
#: Characters that separate words (replaced by a space); other punctuation is deleted.
_SEPARATORS = frozenset("/\\_")


# ---------------------------------------------------------------------------------------------
# normalization


def _char_class(ch: str) -> str:
    """'s' separator (becomes a space), 'x' deleted, 'k' kept."""
    if ch in _SEPARATORS or ch.isspace():
        return "s"
    cat = unicodedata.category(ch)
    if cat in ("Pd", "Pc", "Zs", "Zl", "Zp"):  # dashes, connectors, unicode spaces
        return "s"
    if cat[0] in "PS" or cat in ("Mn", "Cf", "Cc"):  # punctuation, symbols, accents, controls
        return "x"
    return "k"


def normalize_answer(s: str) -> str:
    """SQuAD/TriviaQA answer normalization, unicode-aware.

    Lowercase (``casefold``), strip punctuation, remove the articles *a*, *an*, *the*, collapse
    whitespace. Unicode is handled as follows: compatibility forms are folded (NFKD:
    full-width letters, ligatures, superscripts), accents are stripped (``"Beyoncé"`` ->
    ``"beyonce"``), every punctuation or symbol character (unicode categories P* and S*,
    which include ``string.punctuation`` and curly quotes) is deleted as in SQuAD
    (``"Arthur's"`` -> ``"arthurs"``, ``"U.S."`` -> ``"us"``), except dashes, underscores and
    slashes, which separate words (``"Jean-Paul"`` -> ``"jean paul"``, as TriviaQA's
    evaluation script does for underscores).

    >>> normalize_answer("The  Eiffel-Tower, in PARIS!")
    'eiffel tower in paris'
    """
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", str(s)).casefold())
    out = []
    for ch in text:
        kind = _char_class(ch)
        if kind == "k":
            out.append(ch)
        elif kind == "s":
            out.append(" ")
    return " ".join(w for w in "".join(out).split() if w not in _ARTICLES)


def answer_tokens(s: str) -> list[str]:
    """The tokens of :func:`normalize_answer` (whitespace split)."""
    return normalize_answer(s).split()


# ---------------------------------------------------------------------------------------------
# TriviaQA: whole-token containment


def _contains(haystack: str, needle: str) -> bool:
    """``needle`` occurs in ``haystack`` as a whole-token sequence (both normalized)."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def matching_reference(answer: str, references: Sequence[str]) -> str | None:
    norm = normalize_answer(answer)
    for ref in references:
        if _contains(norm, normalize_answer(ref)):
            return ref
    return None


def match_label(answer: str, references: Sequence[str]) -> int:
    """TriviaQA rule: 0 when some reference (alias) is contained in the answer, else 1.

    Containment is on :func:`normalize_answer` forms and on whole tokens: alias ``"Paris"``
    matches ``"The capital is Paris."``, alias ``"art"`` does not match ``"a party"``. Aliases
    that normalize to nothing (``"The"``, ``"?"``) never match; an answer with no usable
    reference is hallucinated (1).
    """
    if isinstance(references, str):
        raise TypeError("references must be a sequence of strings, not a string")
    return NOT_HALLUCINATED if matching_reference(answer, references) is not None else HALLUCINATED


# ---------------------------------------------------------------------------------------------
# TruthfulQA: closer to an incorrect reference than to every correct one


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two sequences (O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str | Sequence[str], reference: str | Sequence[str]) -> float:
    """ROUGE-L F1 (beta = 1) between two texts, or two token lists, over normalized tokens.

    precision = LCS / len(candidate), recall = LCS / len(reference), F1 their harmonic mean;
    0.0 when either side is empty or nothing is shared. Strings are tokenized with
    :func:`answer_tokens`; token lists are used as given.
    """
    c = answer_tokens(candidate) if isinstance(candidate, str) else list(candidate)
    r = answer_tokens(reference) if isinstance(reference, str) else list(reference)
    if not c or not r:
        return 0.0
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, q = lcs / len(c), lcs / len(r)
    return 2 * p * q / (p + q)

"""The evaluation set of the Groundedness benchmark (issue 13): question-grouped splits, a
balanced length-matched subset, and question-level bootstrap confidence intervals.

**Why.** In HaluEval-QA teacher-forced (``halueval_qa_tf``) the hallucinated answers average
16.8 answer tokens and the right ones 5.0 (SmolLM2's tokenizer, the final end-of-turn token
included), so any score that grows with the answer's length separates them; the report's 85 %
on a "balanced set" says nothing about that. The set built here removes length as a cue.

**Splits** (:func:`question_splits`): the questions are dealt to train / validation / test with
:func:`hallugraph.splits.split_groups` (fixed seed, stratified by label share), so all the
answers of one question - its right answer, its two hallucinated ones, and the model's own
generated answer in ``halueval_qa`` - sit in the same split. Default fractions 25 / 25 / 50 %
of the answers: the test side must hold ≥ 200 length-matched answers (see below) and only α, T,
the node budget and the target mode are chosen on validation (a few numbers), while the
supervised baselines (Lookback Lens ...) train on the train side.

**Length matching** (:func:`length_match`): within each split separately, right answers are
paired one-to-one with hallucinated answers whose answer-token counts differ by at most
``tol`` = 2. Pairs may join answers of different questions of the same split (a question's
own hallucinated answers are almost always much longer than its right one). The matching is a
maximum one: both lists are sorted by length (ties in a seeded random order) and matched with
the two-pointer greedy, which is optimal for equal-width tolerance windows on a line. The
length-matched set is exactly balanced (one right + one hallucinated answer per pair) and its
classes have length distributions within ±2 tokens pair by pair, so an answer-length score
gets an AUROC near 0.5 on it (the control in the report checks this).

On the real data (500 questions, seed 0, 25/25/50): see ``docs/BENCHMARKS.md`` (counted by
``hallugraph groundedness-eval OUT --plan-only``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hallugraph.splits import split_groups

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRAC = (0.25, 0.25, 0.5)


def question_splits(
    groups: Sequence[Any] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    seed: int = 0,
    frac: tuple[float, float, float] = DEFAULT_FRAC,
) -> np.ndarray:
    """``[n]`` split name (``train`` / ``val`` / ``test``) of every answer; every question
    (``groups``) on exactly one side (:func:`hallugraph.splits.split_groups`)."""
    idx = split_groups(groups, seed=seed, frac=frac, labels=labels)
    out = np.empty(len(np.asarray(groups)), dtype=object)
    for name, ix in zip(SPLIT_NAMES, idx, strict=True):
        out[ix] = name
    return out.astype(str)


def match_pairs(
    lengths: np.ndarray, labels: np.ndarray, tol: int = 2, seed: int = 0
) -> list[tuple[int, int]]:
    """Maximum one-to-one pairs ``(right, hallucinated)`` (indices into the arrays) whose
    lengths differ by at most ``tol``; ties broken in a seeded random order."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(lengths) != len(labels):
        raise ValueError(f"{len(lengths)} lengths for {len(labels)} labels")
    rng = np.random.default_rng(seed)

    def ordered(cls: int) -> np.ndarray:
        ix = np.flatnonzero(labels == cls)
        ix = ix[rng.permutation(len(ix))]
        return ix[np.argsort(lengths[ix], kind="stable")]

    right, hal = ordered(0), ordered(1)
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < len(right) and j < len(hal):
        a, b = lengths[right[i]], lengths[hal[j]]
        if b < a - tol:
            j += 1
        elif b > a + tol:
            i += 1
        else:
            pairs.append((int(right[i]), int(hal[j])))
            i += 1
            j += 1
    return pairs


def length_match(
    lengths: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    splits: Sequence[str] | np.ndarray,
    tol: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """``[n]`` pair id of every answer (``-1``: not in the length-matched set); pairs never
    cross splits (:func:`match_pairs` within each split). Pair ids are ``0..P-1``."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    splits = np.asarray(splits).astype(str).reshape(-1)
    if not len(lengths) == len(labels) == len(splits):
        raise ValueError(f"{len(lengths)} lengths, {len(labels)} labels, {len(splits)} splits")
    pair = np.full(len(lengths), -1, dtype=np.int64)
    k = 0
    for name in sorted(set(splits.tolist())):
        ix = np.flatnonzero(splits == name)
        for r, h in match_pairs(lengths[ix], labels[ix], tol=tol, seed=seed):
            pair[ix[r]] = pair[ix[h]] = k
            k += 1
    return pair


def count_matched(
    lengths: np.ndarray, labels: np.ndarray, splits: np.ndarray, pair: np.ndarray
) -> dict[str, Any]:
    """Answers per split (all / length-matched per class) and mean answer tokens per class."""
    out: dict[str, Any] = {}
    labels = np.asarray(labels)
    lengths = np.asarray(lengths, dtype=np.float64)
    for name in SPLIT_NAMES:
        s = np.asarray(splits) == name
        m = s & (np.asarray(pair) >= 0)
        out[name] = {
            "answers": int(s.sum()),
            "right": int((s & (labels == 0)).sum()),
            "matched": int(m.sum()),
            "matched_right": int((m & (labels == 0)).sum()),
            "matched_hallucinated": int((m & (labels == 1)).sum()),
            "mean_tokens_right": _mean(lengths[m & (labels == 0)]),
            "mean_tokens_hallucinated": _mean(lengths[m & (labels == 1)]),
        }
    out["all"] = {
        "mean_tokens_right": _mean(lengths[labels == 0]),
        "mean_tokens_hallucinated": _mean(lengths[labels == 1]),
    }
    return out


def _mean(v: np.ndarray) -> float | None:
    return round(float(v.mean()), 3) if len(v) else None


# ---------------------------------------------------------------------------------------------
# question-level bootstrap


def group_bootstrap(
    groups: Sequence[Any] | np.ndarray, n_boot: int = 1000, seed: int = 0
) -> list[np.ndarray]:
    """``n_boot`` resamples of answer indices: questions drawn with replacement, each drawn
    question contributing all its answers (so answers of one question stay together)."""
    groups = np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        for _ in range(n_boot)
    ]


def with_ci(
    metric: Callable[[np.ndarray], float],
    resamples: Sequence[np.ndarray],
    n: int,
) -> dict[str, float | None]:
    """``{"value", "lo", "hi"}``: ``metric`` of all ``n`` answers and the 2.5 / 97.5 %
    percentiles over the resamples (resamples where it is NaN, e.g. one class, are dropped)."""
    value = float(metric(np.arange(n)))
    boots = np.array([metric(ix) for ix in resamples], dtype=np.float64)
    boots = boots[np.isfinite(boots)]
    if not len(boots) or not np.isfinite(value):
        return {"value": _r(value), "lo": None, "hi": None}
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"value": _r(value), "lo": _r(lo), "hi": _r(hi)}


def _r(v: float) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None

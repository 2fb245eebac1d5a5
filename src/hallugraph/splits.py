"""Grouped train / validation / test splits: by question, so no question is on two sides,
approximately stratified by label, deterministic for a seed; and the repeated grouped k-fold of
the evaluation's cross-validation. Shared by the evaluation protocol and the detectors that
choose hyper-parameters on a split of their training data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


def deal_groups(
    groups: Sequence[Any] | np.ndarray,
    frac: Sequence[float],
    seed: int = 0,
    labels: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """The side (``0 .. len(frac) - 1``) of every trace, with all traces of a group on one side.

    Groups (question ids) are shuffled with ``seed`` and dealt one at a time, each to the side
    furthest below its share ``frac`` of the traces dealt so far (largest deficit; ties go to
    the side furthest behind overall, then to the first), so the trace counts follow ``frac``
    as closely as whole groups allow. With ``labels`` the deficits are counted within each
    label stratum — a group's stratum is its share of hallucinated traces, binned into "mostly
    correct" (< 1/3), "mixed" and "mostly hallucinated" (> 2/3) — so each side gets
    approximately the run's hallucination rate. Depends only on the arguments.
    """
    groups = np.asarray(groups)
    n = len(groups)
    f = np.asarray(frac, dtype=np.float64)
    if f.ndim != 1 or len(f) < 1 or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"frac must be non-negative fractions, not {frac!r}")
    f = f / f.sum()
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    if labels is None:
        strata = np.zeros(len(uniq), dtype=np.int64)
    else:
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        if len(y) != n:
            raise ValueError(f"{len(y)} labels for {n} groups entries")
        share = np.bincount(inverse, weights=y, minlength=len(uniq)) / sizes
        strata = np.where(share < 1 / 3, 0, np.where(share > 2 / 3, 2, 1))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    side = np.empty(len(uniq), dtype=np.int64)
    counts = np.zeros((3, len(f)))  # [stratum, side] traces dealt so far
    for g in order:
        c = counts[strata[g]]
        deficit = f * (c.sum() + sizes[g]) - c
        # ties (frequent: e.g. val and test at 20 %) go to the side furthest behind over all
        # strata, then to the first
        tied = deficit >= deficit.max() - 1e-9
        total = counts.sum(0)
        overall = np.where(tied, f * (total.sum() + sizes[g]) - total, -np.inf)
        k = int(np.argmax(overall))
        side[g] = k
        c[k] += sizes[g]
    return side[inverse]


def split_groups(
    groups: Sequence[Any] | np.ndarray,
    seed: int = 0,
    frac: tuple[float, float, float] = (0.6, 0.2, 0.2),
    labels: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices (sorted) with every group on exactly one side, dealt
    by :func:`deal_groups` (stratified by label when ``labels`` are given)."""
    if len(frac) != 3:
        raise ValueError(f"frac must be three non-negative fractions, not {frac!r}")
    side = deal_groups(groups, frac, seed, labels)
    return tuple(np.flatnonzero(side == k) for k in range(3))  # type: ignore[return-value]


def grouped_kfold(
    groups: Sequence[Any] | np.ndarray,
    labels: Sequence[int] | np.ndarray | None = None,
    n_folds: int = 5,
    n_repeats: int = 3,
    seed: int = 0,
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Repeated, grouped (by question), stratified k-fold: ``(repeat, fold, train, test)``
    index arrays (sorted). Within a repeat every trace is in exactly one test fold and no
    question is on both sides of a fold; each repeat deals the groups with its own seed
    (``seed * 1000 + repeat``). Raises ``ValueError`` with fewer groups than folds."""
    groups = np.asarray(groups)
    if n_folds < 2 or n_repeats < 1:
        raise ValueError(f"need n_folds >= 2 and n_repeats >= 1, not {n_folds} x {n_repeats}")
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(f"{n_groups} questions: too few for {n_folds}-fold cross-validation")
    out = []
    for r in range(n_repeats):
        side = deal_groups(groups, [1.0] * n_folds, seed * 1000 + r, labels)
        for k in range(n_folds):
            out.append((r, k, np.flatnonzero(side != k), np.flatnonzero(side == k)))
    return out

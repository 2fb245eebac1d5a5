"""Grouped train / validation / test splits: by question, so no question is on two sides,
approximately stratified by label, deterministic for a seed. Shared by the evaluation protocol
and the detectors that choose hyper-parameters on a split of their training data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


def split_groups(
    groups: Sequence[Any] | np.ndarray,
    seed: int = 0,
    frac: tuple[float, float, float] = (0.6, 0.2, 0.2),
    labels: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices (sorted) with every group on exactly one side.

    Groups (question ids) are shuffled with ``seed`` and dealt to the splits one at a time, each
    to the split furthest below its share ``frac`` of the traces dealt so far (largest deficit;
    ties go to the split furthest behind overall, then to train, val, test), so the trace counts
    follow ``frac`` as closely as whole groups allow. With ``labels`` the deficits are counted
    within each label stratum — a group's stratum is its share of hallucinated traces, binned
    into "mostly correct" (< 1/3), "mixed" and "mostly hallucinated" (> 2/3) — so each split
    gets approximately the run's hallucination rate. The result depends only on ``groups``,
    ``labels``, ``seed`` and ``frac``.
    """
    groups = np.asarray(groups)
    n = len(groups)
    f = np.asarray(frac, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"frac must be three non-negative fractions, not {frac!r}")
    f = f / f.sum()
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
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
    counts = np.zeros((3, 3))  # [stratum, split] traces dealt so far
    for g in order:
        c = counts[strata[g]]
        deficit = f * (c.sum() + sizes[g]) - c
        # ties (frequent: e.g. val and test at 20 %) go to the split furthest behind over all
        # strata, then to the first
        tied = deficit >= deficit.max() - 1e-9
        total = counts.sum(0)
        overall = np.where(tied, f * (total.sum() + sizes[g]) - total, -np.inf)
        k = int(np.argmax(overall))
        side[g] = k
        c[k] += sizes[g]
    trace_side = side[inverse]
    return tuple(np.flatnonzero(trace_side == k) for k in range(3))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# metrics (numpy, vectorized over bootstrap resamples: rows of a 2-D array)

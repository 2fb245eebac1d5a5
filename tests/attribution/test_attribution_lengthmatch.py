"""The Groundedness benchmark's evaluation set: question splits, the ±2-token length matching
(maximum, balanced, never across splits) and the question-level bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from hallugraph.attribution.lengthmatch import (
    count_matched,
    group_bootstrap,
    length_match,
    match_pairs,
    question_splits,
    with_ci,
)
from hallugraph.metrics import roc_auc


def _halueval_like(n_q: int, seed: int = 0):
    """Per question one short right answer and two long hallucinated ones, as in HaluEval."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"q{i:03d}" for i in range(n_q)], 3)
    labels = np.tile([0, 1, 1], n_q)
    lengths = np.where(labels == 0, rng.integers(2, 9, 3 * n_q), rng.integers(3, 30, 3 * n_q))
    return groups, labels, lengths


def _max_matching(lengths, labels, tol):
    r, h = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    adj = np.abs(lengths[r][:, None] - lengths[h][None, :]) <= tol
    m = maximum_bipartite_matching(csr_matrix(adj.astype(np.int8)), perm_type="column")
    return int((m >= 0).sum())


@pytest.mark.parametrize("seed", range(6))
def test_matching_is_maximum_and_within_tolerance(seed):
    _, labels, lengths = _halueval_like(40, seed)
    pairs = match_pairs(lengths, labels, tol=2, seed=seed)
    assert len(pairs) == _max_matching(lengths, labels, 2)
    used = [i for p in pairs for i in p]
    assert len(used) == len(set(used))  # one-to-one
    for r, h in pairs:
        assert labels[r] == 0 and labels[h] == 1
        assert abs(int(lengths[r]) - int(lengths[h])) <= 2


def test_splits_by_question_and_pairs_never_cross_them():
    groups, labels, lengths = _halueval_like(200)
    split = question_splits(groups, labels, seed=0)
    assert set(split) == {"train", "val", "test"}
    for q in np.unique(groups):
        assert len(set(split[groups == q])) == 1  # no question on two sides
    assert (question_splits(groups, labels, seed=0) == split).all()  # fixed seed
    assert (split == "test").sum() == pytest.approx(0.5 * len(split), abs=3)
    pair = length_match(lengths, labels, split, tol=2)
    ids = pair[pair >= 0]
    assert len(ids) and np.bincount(ids).tolist() == [2] * (ids.max() + 1)
    for k in range(ids.max() + 1):
        i, j = np.flatnonzero(pair == k)
        assert split[i] == split[j] and labels[i] != labels[j]
        assert abs(int(lengths[i]) - int(lengths[j])) <= 2
    # matched set: balanced, and length no longer separates the classes nearly as well
    m = pair >= 0
    assert labels[m].sum() * 2 == m.sum()
    assert roc_auc(labels, lengths) - roc_auc(labels[m], lengths[m]) > 0.1
    counts = count_matched(lengths, labels, split, pair)
    assert sum(counts[s]["matched"] for s in ("train", "val", "test")) == m.sum()
    for s in ("train", "val", "test"):
        c = counts[s]
        assert c["matched_right"] == c["matched_hallucinated"] == c["matched"] // 2
        assert c["answers"] == (split == s).sum()


def test_length_match_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="lengths"):
        length_match([1, 2], [0, 1], ["test"])


def test_group_bootstrap_keeps_questions_whole():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    for ix in group_bootstrap(groups, n_boot=50, seed=1):
        drawn = groups[ix]
        for g in set(drawn):
            # a drawn question brings all its answers (a multiple of its size)
            assert (drawn == g).sum() % (groups == g).sum() == 0
    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])
    ci = with_ci(lambda ix: roc_auc(y[ix], s[ix]), group_bootstrap(groups, 200), len(y))
    assert ci["value"] == 1.0 and ci["lo"] <= ci["value"] <= ci["hi"]

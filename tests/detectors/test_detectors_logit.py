"""Logit baselines and the answer-length control: fixed orientation, scores in [0, 1]."""

from __future__ import annotations

import numpy as np
from tiny_models import FakeTable

from hallugraph.detectors import get_detector


def test_orientation_longer_and_less_likely_answers_score_higher():
    logit = np.array(
        [[0.1, -0.1, -0.5, 0.2, 0.4], [2.0, -2.0, -6.0, 2.5, 4.0], [1.0, -1.0, -2.0, 1.0, 2.0]],
        np.float32,
    )
    length = np.array([[2.0], [30.0], [9.0]], np.float32)
    X = FakeTable({"logit": logit, "answer_length": length})
    y = np.array([0, 1, 1])
    for name in ("perplexity", "min_logprob", "mean_entropy", "answer_length"):
        p = get_detector(name).fit(X, y).predict_proba(X)
        assert ((0 < p) & (p < 1)).all(), name
        assert p[1] > p[2] > p[0], name  # the order of the raw score, whatever the labels
        # unsupervised: the labels do not change the scores
        q = get_detector(name).fit(X, 1 - y).predict_proba(X)
        np.testing.assert_allclose(p, q)

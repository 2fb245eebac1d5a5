"""Token-probability statistics and the answer-length control, on hand-made traces."""

from __future__ import annotations

import numpy as np
import pytest

from hallugraph.features import get_statistic


def _trace(answer_len, finished, logprobs, entropy):
    return {
        "answer_len": answer_len,
        "finished": finished,
        "token_logprobs": logprobs,
        "token_entropy": entropy,
    }


def test_logit_stats_drop_the_final_end_of_turn_token():
    t = _trace(3, True, [-1.0, -3.0, -50.0], [0.5, 1.5, 9.0])
    v = get_statistic("logit").compute(t, {})
    np.testing.assert_allclose(v, [2.0, -2.0, -3.0, 1.0, 1.5])


@pytest.mark.parametrize(("n", "finished", "want"), [(5, True, 4), (5, False, 5), (1, True, 1)])
def test_answer_length_counts_content_tokens(n, finished, want):
    t = _trace(n, finished, [0.0] * n, [0.0] * n)
    assert get_statistic("answer_length").compute(t, {}).tolist() == [want]

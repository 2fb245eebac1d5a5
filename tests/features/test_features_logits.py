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
    stat = get_statistic("logit")
    want = {
        "log_perplexity": 2.0,
        "mean_logprob": -2.0,
        "min_logprob": -3.0,
        "mean_entropy": 1.0,
        "max_entropy": 1.5,
    }
    assert stat.compute(t, {}) == pytest.approx(want)
    # the cached array: the outputs in their declared order, float32
    v = stat.values(t, {})
    assert v.dtype == np.float32 and stat.outputs == tuple(want)
    np.testing.assert_array_equal(v, np.array(list(want.values()), np.float32))


def test_named_outputs_are_read_by_name_and_checked():
    from tiny_models import FakeTable

    X = FakeTable({"logit": np.arange(10, dtype=np.float32).reshape(2, 5)})
    np.testing.assert_array_equal(X.stat("logit.min_logprob"), [2, 7])
    with pytest.raises(KeyError, match="no output 'min'.*logit.min_logprob"):
        X.stat("logit.min")
    stat = get_statistic("logit")
    stat.compute = lambda trace, info: {"log_perplexity": 1.0}  # an output missing
    with pytest.raises(ValueError, match="declares the outputs"):
        stat.values({}, {})


@pytest.mark.parametrize(("n", "finished", "want"), [(5, True, 4), (5, False, 5), (1, True, 1)])
def test_answer_length_counts_content_tokens(n, finished, want):
    t = _trace(n, finished, [0.0] * n, [0.0] * n)
    assert get_statistic("answer_length").compute(t, {}).tolist() == [want]

"""Hidden-state statistics on hand-built tensors with known answers, and on the tiny run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hallugraph.features import FeatureTable, get_statistic
from hallugraph.features.hidden import LLMCHECK_ALPHA, llmcheck_hidden_score
from hallugraph.store import TraceStore

L1, S, H = 3, 9, 6  # hidden-state indices, sequence length, width


def positional_trace(prompt_len: int, answer_len: int, finished: bool) -> dict:
    """hidden_states[l, s, :] = 100 l + s, so a row tells which position it came from."""
    hs = (100 * np.arange(L1)[:, None, None] + np.arange(S)[None, :, None]) * np.ones(H)
    return {
        "hidden_states": hs.astype(np.float16),
        "prompt_len": prompt_len,
        "answer_len": answer_len,
        "finished": finished,
    }


@pytest.mark.parametrize(
    ("finished", "answer_len", "pos"),
    [
        (True, 4, 5 + 2),  # EOS at 8 excluded: last content token at 7
        (False, 4, 5 + 3),  # cut by max_new_tokens: the last token is content
        (True, 1, 5),  # the answer is only EOS: fall back to it
    ],
)
def test_hidden_last_picks_the_last_content_row(finished, answer_len, pos):
    t = positional_trace(5, answer_len, finished)
    out = get_statistic("hidden_last").compute(t, {})
    assert out.shape == (L1, H) and out.dtype == np.float32
    np.testing.assert_array_equal(out, (100 * np.arange(L1)[:, None] + pos) * np.ones(H))


def test_hidden_last_uses_its_position_not_the_sequence_end():
    # answer shorter than the sequence (not possible in a store, but the index must come from
    # prompt_len + answer_len, never from S)
    t = positional_trace(2, 3, True)
    out = get_statistic("hidden_last").compute(t, {})
    np.testing.assert_array_equal(out[:, 0], 100 * np.arange(L1) + 3)


@pytest.mark.parametrize(("finished", "mean_pos"), [(True, 6.0), (False, 6.5)])
def test_hidden_mean_averages_the_content_rows(finished, mean_pos):
    t = positional_trace(5, 4, finished)  # content 5,6,7 (+8 when not finished)
    out = get_statistic("hidden_mean").compute(t, {})
    assert out.shape == (L1, H)
    np.testing.assert_allclose(out, (100 * np.arange(L1)[:, None] + mean_pos) * np.ones(H))


def _zero_mean_orthonormal(H: int, k: int, seed: int = 0) -> np.ndarray:
    """k orthonormal vectors in R^H, each orthogonal to the all-ones vector: ``[k, H]``."""
    rng = np.random.default_rng(seed)
    M = np.concatenate([np.ones((H, 1)), rng.normal(size=(H, k))], axis=1)
    Q, _ = np.linalg.qr(M)
    return Q[:, 1 : k + 1].T


def test_llmcheck_hidden_score_of_known_singular_values():
    s = np.array([3.0, 0.5, 0.01, 2.0])
    Z = s[:, None] * _zero_mean_orthonormal(16, 4)  # rows centered already, Gram = diag(s^2)
    want = np.mean(np.log(s**2 + LLMCHECK_ALPHA))
    assert llmcheck_hidden_score(Z) == pytest.approx(want, rel=1e-10)
    # centering is over the features of each token: adding c_t * ones to token t changes nothing
    shifted = Z + np.array([5.0, -2.0, 7.0, 0.3])[:, None]
    assert llmcheck_hidden_score(shifted) == pytest.approx(want, rel=1e-10)
    # but centering over tokens is NOT what the reference does: a shared offset direction counts
    v = _zero_mean_orthonormal(16, 5)[4]
    assert llmcheck_hidden_score(Z + 10 * v) != pytest.approx(want, rel=1e-3)


def test_llmcheck_hidden_score_matches_the_reference_formula():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(7, 20)) * 3 + 1  # n = 7 tokens, H = 20
    Zt = Z.T  # [H, n] as in the reference
    J = np.eye(20) - np.ones((20, 20)) / 20
    Sigma = Zt.T @ J @ Zt + LLMCHECK_ALPHA * np.eye(7)
    want = np.log(np.linalg.svd(Sigma, compute_uv=False)).mean()
    assert llmcheck_hidden_score(Z) == pytest.approx(want, rel=1e-10)


def test_llmcheck_hidden_statistic_uses_the_whole_answer_per_layer():
    rng = np.random.default_rng(2)
    hs = rng.normal(size=(L1, S, H))
    t = {"hidden_states": hs, "prompt_len": 4, "answer_len": 3, "finished": True}
    out = get_statistic("llmcheck_hidden").compute(t, {})
    assert out.shape == (L1,) and out.dtype == np.float32
    want = [llmcheck_hidden_score(hs[layer, 4:7]) for layer in range(L1)]
    np.testing.assert_allclose(out, want, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_copy(tiny_run, tmp_path_factory):
    dst = tmp_path_factory.mktemp("hidden_stats") / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def test_statistics_on_the_tiny_run(tiny_copy):
    X = FeatureTable.from_run(tiny_copy)
    store = TraceStore(tiny_copy)
    last, mean, llc = X.stat("hidden_last"), X.stat("hidden_mean"), X.stat("llmcheck_hidden")
    n = len(X)
    assert n == 24
    assert last.shape == mean.shape == (n, 3, 32)  # 2 layers + embeddings, hidden 32
    assert llc.shape == (n, 3)
    assert all(np.isfinite(a).all() for a in (last, mean, llc))
    for i in (0, 5, 23):
        t = store[i]
        n_content = t["answer_len"] - (1 if t["finished"] and t["answer_len"] > 1 else 0)
        pos = t["prompt_len"] + n_content - 1
        np.testing.assert_array_equal(last[i], t["hidden_states"][:, pos].astype(np.float32))
        rows = t["hidden_states"][:, t["prompt_len"] : pos + 1].astype(np.float64)
        np.testing.assert_allclose(mean[i], rows.mean(axis=1), rtol=1e-5, atol=1e-5)

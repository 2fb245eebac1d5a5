"""LapEigvals and Lookback Lens statistics on hand-built attention maps with known answers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hallugraph.features import FeatureTable, get_statistic
from hallugraph.features.attention import (
    LapEig,
    Lookback,
    laplacian_diagonal,
    lookback_ratio,
    top_k_desc,
)
from hallugraph.store import TraceStore


def uniform_causal(S: int) -> np.ndarray:
    """Row i attends uniformly to positions 0..i."""
    return np.tril(np.ones((S, S))) / np.arange(1, S + 1)[:, None]


# --- LapEigvals -------------------------------------------------------------------------------

# Uniform causal map, S = 4. Column sums (attention received): 1 + 1/2 + 1/3 + 1/4 = 25/12,
# 1/2 + 1/3 + 1/4 = 13/12, 1/3 + 1/4 = 7/12, 1/4; tokens able to attend to each: 4, 3, 2, 1.
# Degrees 25/48, 13/36, 7/24, 1/4; minus the diagonal 1, 1/2, 1/3, 1/4:
UNIFORM4 = [25 / 48 - 1, 13 / 36 - 1 / 2, 7 / 24 - 1 / 3, 1 / 4 - 1 / 4]  # -23/48, -5/36, -1/24, 0
# Identity map, S = 4: degrees 1/4, 1/3, 1/2, 1 minus the diagonal 1.
IDENTITY4 = [1 / 4 - 1, 1 / 3 - 1, 1 / 2 - 1, 0.0]


def test_laplacian_of_the_uniform_causal_map_by_hand():
    A = uniform_causal(4)
    np.testing.assert_allclose(laplacian_diagonal(A), UNIFORM4, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(UNIFORM4, [-23 / 48, -5 / 36, -1 / 24, 0.0], atol=1e-15)
    np.testing.assert_allclose(laplacian_diagonal(np.eye(4)), IDENTITY4, atol=1e-15)


def test_laplacian_diagonal_is_the_spectrum_of_d_minus_a():
    rng = np.random.default_rng(0)
    S = 7
    logits = rng.normal(size=(S, S)) * 2
    A = np.tril(np.exp(logits))
    A /= A.sum(axis=1, keepdims=True)  # a causal softmax map
    degree = A.sum(axis=0) / np.arange(S, 0, -1)
    lap = np.diag(degree) - A
    spectrum = np.sort(np.linalg.eigvals(lap).real)
    np.testing.assert_allclose(np.sort(laplacian_diagonal(A)), spectrum, atol=1e-12)


def test_top_k_sorts_descending_and_pads_with_nan():
    v = np.array([[-0.5, 0.2, -0.1]])
    np.testing.assert_array_equal(top_k_desc(v, 2), [[0.2, -0.1]])
    # issue 18: zero padding told a classifier the sequence length (where the zeros start)
    np.testing.assert_array_equal(top_k_desc(v, 5), [[0.2, -0.1, -0.5, np.nan, np.nan]])


def _trace(attn: np.ndarray, prompt_len: int, answer_len: int, span=None) -> dict:
    return {
        "attentions": attn,
        "prompt_len": prompt_len,
        "answer_len": answer_len,
        "finished": True,
        "context_span": span,
    }


def test_lapeig_statistic_drops_the_last_token_sorts_and_pads():
    S = 5  # the map the reference sees is the first 4 tokens (the last one is never fed)
    uni, eye = uniform_causal(S), np.eye(S)
    attn = np.stack([np.stack([uni, eye]), np.stack([eye, uni])]).astype(np.float16)
    out = LapEig(k=6).compute(_trace(attn, 3, 2), {})
    assert out.shape == (2, 2, 6) and out.dtype == np.float32
    want_uni = sorted(UNIFORM4, reverse=True) + [np.nan] * 2  # 0, -1/24, -5/36, -23/48, pad
    want_eye = sorted(IDENTITY4, reverse=True) + [np.nan] * 2
    # fp16 storage of 1/3 etc. limits the precision
    np.testing.assert_allclose(out[0, 0], want_uni, atol=1e-3)
    np.testing.assert_allclose(out[0, 1], want_eye, atol=1e-3)
    np.testing.assert_allclose(out[1, 0], want_eye, atol=1e-3)
    assert out[0, 0, 1] == pytest.approx(-1 / 24, abs=1e-3)

    # the last token's row and column do not matter
    attn2 = attn.copy()
    attn2[..., -1, :] = 0
    attn2[..., -1, 0] = 1
    np.testing.assert_array_equal(LapEig(k=6).compute(_trace(attn2, 3, 2), {}), out)

    top2 = LapEig(k=2).compute(_trace(attn, 3, 2), {})
    np.testing.assert_array_equal(top2, out[..., :2])


def test_lapeig_default_k_and_shape():
    st = get_statistic("lapeig")
    assert st.k == 100 and st.params()["k"] == 100
    with pytest.raises(ValueError):
        LapEig(k=0)


# --- Lookback Lens ----------------------------------------------------------------------------

P, N = 6, 4  # prompt 0..5, answer 6..9; steps t = 1..3 read the query rows 6, 7, 8
SPAN = (1, 4)  # three context tokens
S = P + N


def _lookback(attn, span=SPAN, context="span", answer_len=N):
    t = _trace(attn[None, None].astype(np.float32), P, answer_len, span)
    return float(Lookback(context).compute(t, {})[0, 0])


def _junk_rows(attn: np.ndarray) -> np.ndarray:
    """Rows the statistic must not read: the prompt and the last answer token."""
    rng = np.random.default_rng(1)
    for q in [*range(P), S - 1]:
        w = rng.random(q + 1)
        attn[q, : q + 1] = w / w.sum()
    return attn


def test_lookback_equal_weight_on_context_and_previous_answer_is_one_half():
    attn = np.zeros((S, S))
    for q in range(P, S - 1):
        cols = [*range(*SPAN), *range(P, q + 1)]  # context + answer tokens up to the query
        attn[q, cols] = 1 / len(cols)
    _junk_rows(attn)
    assert _lookback(attn) == pytest.approx(0.5, abs=1e-12)


def test_lookback_half_mass_each_side_uses_means_not_sums():
    attn = np.zeros((S, S))
    for q in range(P, S - 1):
        attn[q, SPAN[0] : SPAN[1]] = 0.5 / 3
        attn[q, P : q + 1] = 0.5 / (q + 1 - P)
    _junk_rows(attn)
    # step with g answer keys: (0.5/3) / (0.5/3 + 0.5/g) = g / (3 + g), for g = 1, 2, 3
    want = np.mean([1 / 4, 2 / 5, 3 / 6])
    assert _lookback(attn) == pytest.approx(want, abs=1e-6)
    assert abs(want - 0.5) > 0.1  # a ratio of attention *sums* would be 0.5 at every step


def test_lookback_all_on_context_is_one_and_all_on_answer_is_zero():
    ctx = np.zeros((S, S))
    gen = np.zeros((S, S))
    for q in range(P, S - 1):
        ctx[q, SPAN[0] : SPAN[1]] = 1 / 3
        gen[q, P : q + 1] = 1 / (q + 1 - P)
    assert _lookback(_junk_rows(ctx)) == pytest.approx(1.0, abs=1e-12)
    assert _lookback(_junk_rows(gen)) == pytest.approx(0.0, abs=1e-12)


def test_lookback_context_span_versus_whole_prompt():
    # every step: 0.4 on the span (3 tokens), 0.3 on prompt token 0 (outside the span),
    # 0.3 spread over the answer so far
    attn = np.zeros((S, S))
    for q in range(P, S - 1):
        attn[q, SPAN[0] : SPAN[1]] = 0.4 / 3
        attn[q, 0] = 0.3
        attn[q, P : q + 1] = 0.3 / (q + 1 - P)
    _junk_rows(attn)
    g = np.arange(1, 4)  # answer keys at each step
    gen_mean = 0.3 / g
    want_span = np.mean((0.4 / 3) / (0.4 / 3 + gen_mean))  # token 0 counts on neither side
    want_prompt = np.mean((0.7 / P) / (0.7 / P + gen_mean))
    assert _lookback(attn) == pytest.approx(want_span, abs=1e-6)
    assert _lookback(attn, context="prompt") == pytest.approx(want_prompt, abs=1e-6)
    # no span in the trace: "span" falls back to the whole prompt
    assert _lookback(attn, span=None) == pytest.approx(want_prompt, abs=1e-6)
    assert get_statistic("lookback_prompt").context == "prompt"
    assert get_statistic("lookback").context == "span"


def test_lookback_one_token_answer_and_zero_weights():
    attn = _junk_rows(np.zeros((S, S)))
    # a one-token answer keeps step 0 (row P - 1): no generated token to look back at
    assert lookback_ratio(attn, P, 1, slice(*SPAN)) == pytest.approx(1.0)
    # neither side gets any weight (all on prompt token 0): neutral 0.5
    zero = np.zeros((S, S))
    zero[:, 0] = 1.0
    assert lookback_ratio(zero, P, N, slice(*SPAN)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Lookback("answer")


# --- the tiny run -----------------------------------------------------------------------------


def test_attention_statistics_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    eig = X.stat("lapeig")
    lb, lbp = X.stat("lookback"), X.stat("lookback_prompt")
    assert eig.shape == (24, 2, 4, 100)
    n_valid = np.isfinite(eig).sum(-1)
    seq = np.array([r["seq_len"] for r in X.rows])
    np.testing.assert_array_equal(n_valid, np.minimum(seq - 1, 100)[:, None, None] + 0 * n_valid)
    d = np.diff(eig, axis=-1)
    assert (d[np.isfinite(d)] <= 0).all()  # sorted; shorter sequences: NaN after their values
    assert lb.shape == lbp.shape == (24, 2, 4)
    assert ((lb >= 0) & (lb <= 1)).all() and ((lbp >= 0) & (lbp <= 1)).all()
    assert not np.allclose(lb, lbp)  # the run has a context span

    t = TraceStore(run)[3]
    A = t["attentions"].astype(np.float64)
    p, n, (cs, ce) = t["prompt_len"], t["answer_len"], t["context_span"]
    # brute force: the eigenvalues of D - A over all tokens but the last, per map
    m = A.shape[-1] - 1
    want_eig = np.zeros((2, 4, 100))
    want_lb = np.zeros((2, 4))
    for layer in range(2):
        for h in range(4):
            a = A[layer, h, :m, :m]
            lap = np.diag(a.sum(0) / (m - np.arange(m))) - a
            ev = np.sort(np.linalg.eigvals(lap).real)[::-1]
            want_eig[layer, h, : min(m, 100)] = ev[:100]
            ratios = []
            for step in range(1, n):
                row = A[layer, h, p - 1 + step]
                c, g = row[cs:ce].mean(), row[p : p + step].mean()
                ratios.append(c / (c + g))
            want_lb[layer, h] = np.mean(ratios)
    np.testing.assert_allclose(eig[3], want_eig, atol=1e-6)
    np.testing.assert_allclose(lb[3], want_lb, rtol=1e-6)

"""HalluShift's statistic: hand-built tensors with known values, a literal transcription of the
reference on generate-style outputs of a 32-layer model, several depths, the tiny run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance

from hallugraph.features import FeatureTable, get_statistic
from hallugraph.features.hallushift import (
    PROB_FEATURES,
    HalluShiftStats,
    feature_names,
    num_features,
    probability_features,
    sampled_layers,
)
from hallugraph.store import TraceStore

E = np.e


def random_trace(L, P=5, n=4, heads=2, H=8, seed=0, finished=True):
    """Random hidden states, causal softmax attention (zeros above the diagonal), log-probs."""
    rng = np.random.default_rng(seed)
    S = P + n
    hs = rng.normal(size=(L + 1, S, H))
    logits = rng.normal(scale=2.0, size=(L, heads, S, S))
    logits[..., ~np.tril(np.ones((S, S), bool))] = -np.inf
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    return {
        "hidden_states": hs.astype(np.float32),
        "attentions": attn.astype(np.float32),
        "prompt_len": P,
        "answer_len": n,
        "finished": finished,
        "token_logprobs": np.log(rng.uniform(0.05, 1.0, n)).tolist(),
        "token_entropy": rng.uniform(0.0, 3.0, n).tolist(),
    }


def constant_trace(L, P=3, n=4, heads=2, H=6, seed=0):
    """Every layer holds the same hidden states and the same attention maps."""
    t = random_trace(1, P, n, heads, H, seed)
    t["hidden_states"] = np.repeat(t["hidden_states"][1:], L + 1, axis=0)
    t["attentions"] = np.repeat(t["attentions"], L, axis=0)
    return t


def blocks(out, L, stride=2):
    m = len(sampled_layers(L, stride)) - 1
    return {
        "w_hidden": out[:m],
        "cos_hidden": out[m : 2 * m],
        "w_attn": out[2 * m : 3 * m],
        "cos_attn": out[3 * m : 4 * m],
        "prob": out[4 * m :],
    }


# ---------------------------------------------------------------------------- layer sampling


def test_sampled_layers_are_every_second_layer_as_the_reference():
    # issue 18: the reference reads hidden_states[2, 4, ..., L]; the old rule spread 16
    # layers over 30 (2, 4, ..., 14, 15, 17, ..., 29, 30)
    assert sampled_layers(32) == list(range(2, 33, 2))  # hidden_states[2, 4, ..., 32]
    assert sampled_layers(30) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
    assert sampled_layers(30) == list(range(2, 31, 2)) and len(sampled_layers(30)) == 15
    assert sampled_layers(5) == [2, 4]
    assert sampled_layers(3) == [1, 2, 3]  # too shallow for two: every layer
    assert sampled_layers(2) == [1, 2]
    assert sampled_layers(1) == [1]
    assert sampled_layers(30, 4) == [4, 8, 12, 16, 20, 24, 28]
    for L in range(4, 81):
        got = sampled_layers(L)
        assert got == list(range(2, L + 1, 2))
    with pytest.raises(ValueError):
        sampled_layers(0)


@pytest.mark.parametrize(("L", "count"), [(1, 11), (2, 15), (5, 15), (16, 39), (30, 67), (32, 71)])
def test_feature_count_for_several_depths(L, count):
    assert num_features(L) == count == len(feature_names(L))
    for prefill in ("flatten", "last"):
        out = HalluShiftStats(prefill=prefill).compute(random_trace(L, seed=L), {})
        assert out.shape == (count,) and out.dtype == np.float32 and np.isfinite(out).all()
        b = blocks(out, L)
        assert (b["w_hidden"] >= 0).all() and (b["w_attn"] >= 0).all()
        assert ((b["cos_hidden"] > 0) & (b["cos_hidden"] <= 1 + 1e-6)).all()
        assert ((b["cos_attn"] > 0) & (b["cos_attn"] <= 1 + 1e-6)).all()
        assert len(b["prob"]) == len(PROB_FEATURES)


def test_stride_parameter():
    st = HalluShiftStats(stride=10)
    assert st.params() == {"stride": 10, "prefill": "flatten"}
    assert st.compute(random_trace(30), {}).shape == (4 * 2 + 11,)
    assert feature_names(30, 10)[:2] == ["wasserstein_hidden_10-20", "wasserstein_hidden_20-30"]
    with pytest.raises(ValueError):
        HalluShiftStats(prefill="mean")
    with pytest.raises(ValueError):
        HalluShiftStats(stride=0)


# ---------------------------------------------------------------------------- known values


@pytest.mark.parametrize("prefill", ["flatten", "last"])
@pytest.mark.parametrize("L", [2, 5, 30])
def test_identical_layers_give_zero_distance_and_unit_cosine(L, prefill):
    out = HalluShiftStats(prefill=prefill).compute(constant_trace(L), {})
    b = blocks(out, L)
    np.testing.assert_allclose(b["w_hidden"], 0.0, atol=1e-12)
    np.testing.assert_allclose(b["w_attn"], 0.0, atol=1e-12)
    np.testing.assert_allclose(b["cos_hidden"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(b["cos_attn"], 1.0, rtol=1e-6)


def test_known_hidden_shift_per_token():
    """H = 2, one step (prefill='last': the last prompt row). softmax([0, 0]) = [.5, .5],
    softmax([log 3, 0]) = [.75, .25], softmax([0, log 3]) = [.25, .75]."""
    hs = np.zeros((4, 2, 2))  # [L+1=4, S=2, H=2]; P = 1, n = 1: the step is row 0
    hs[1, 0] = [0, 0]
    hs[2, 0] = [np.log(3), 0]
    hs[3, 0] = [0, np.log(3)]
    t = {
        "hidden_states": hs,
        "attentions": np.ones((3, 1, 2, 2)) * np.tril(np.ones((2, 2))),
        "prompt_len": 1,
        "answer_len": 1,
        "token_logprobs": [0.0],
        "token_entropy": [0.0],
    }
    b = blocks(HalluShiftStats(prefill="last").compute(t, {}), 3)
    # [.5,.5] vs [.75,.25]: sorted values differ by .25 twice -> W = .25;
    # [.75,.25] vs [.25,.75]: the same VALUES in another order -> W = 0 (values, not weights)
    np.testing.assert_allclose(b["w_hidden"], [0.25, 0.0], atol=1e-7)
    cos_a = 0.5 / (np.sqrt(0.5) * np.sqrt(0.625))
    cos_b = 2 * 0.75 * 0.25 / 0.625
    np.testing.assert_allclose(b["cos_hidden"], [cos_a, cos_b], rtol=1e-6)


def test_known_attention_shift_ignores_keys_after_the_token():
    """One head, prefill='last', P = 2, n = 1: the step is row 1 with keys 0..1."""
    L, S = 3, 3
    attn = np.zeros((L, 1, S, S))
    attn[:, 0, 0, 0] = 1.0
    attn[0, 0, 1, :2] = [1.0, 0.0]  # softmax -> [e, 1] / (e + 1)
    attn[1, 0, 1, :2] = [0.0, 1.0]  # the same values swapped
    attn[2, 0, 1, :2] = [0.5, 0.5]  # softmax -> [.5, .5]
    attn[:, 0, 1, 2] = [7.0, -3.0, 11.0]  # garbage after the token: must be ignored
    attn[:, 0, 2] = [[0.2, 0.3, 0.5], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]  # row 2: not a step
    t = {
        "hidden_states": np.zeros((L + 1, S, 4)),
        "attentions": attn,
        "prompt_len": 2,
        "answer_len": 1,
        "token_logprobs": [-0.1],
        "token_entropy": [0.3],
    }
    b = blocks(HalluShiftStats(prefill="last").compute(t, {}), L)
    w_ac = (E - 1) / (2 * (E + 1))
    np.testing.assert_allclose(b["w_attn"], [0.0, w_ac], rtol=1e-6)
    cos_ab = 2 * E / (E**2 + 1)
    cos_bc = 0.5 / (np.sqrt(0.5) * np.sqrt(E**2 + 1) / (E + 1))
    np.testing.assert_allclose(b["cos_attn"], [cos_ab, cos_bc], rtol=1e-6)


def test_flatten_prefill_averages_the_prompt_block_with_the_token_steps():
    """prefill='flatten' with n = 2: step 0 is the whole prompt block (one distribution),
    step 1 the row of the first answer token; the features are their mean."""
    t = random_trace(2, P=3, n=2, heads=2, H=5, seed=3)
    hs, attn = t["hidden_states"].astype(np.float64), t["attentions"].astype(np.float64)
    sm = lambda x: np.exp(x - x.max()) / np.exp(x - x.max()).sum()  # noqa: E731
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    h0 = [sm(hs[layer, :3].ravel()) for layer in (1, 2)]
    h1 = [sm(hs[layer, 3]) for layer in (1, 2)]
    a0 = [sm(attn[layer, :, :3, :3].ravel()) for layer in (0, 1)]  # causal zeros included
    a1 = [sm(attn[layer, :, 3, :4].ravel()) for layer in (0, 1)]
    want = [
        (wasserstein_distance(*h0) + wasserstein_distance(*h1)) / 2,
        (cos(*h0) + cos(*h1)) / 2,
        (wasserstein_distance(*a0) + wasserstein_distance(*a1)) / 2,
        (cos(*a0) + cos(*a1)) / 2,
    ]
    out = HalluShiftStats().compute(t, {})
    np.testing.assert_allclose(out[:4], want, rtol=1e-5)


# ---------------------------------------------------------------- the reference, transcribed


def reference_shift(step_hidden, step_attn):
    """``plot_internal_state_2`` of the reference (hard-coded for 32 layers), on generate-style
    tuples: per step, softmax of the flattened tensor, scipy's Wasserstein on the values, torch
    cosine similarity; averaged over the steps."""

    def dist(x):
        return F.softmax(x.reshape(-1), dim=-1)

    def div(vec):
        w = [wasserstein_distance(vec[i].numpy(), vec[i + 1].numpy()) for i in range(15)]
        c = [F.cosine_similarity(vec[i][None], vec[i + 1][None]).item() for i in range(15)]
        return w + c

    hid = [div([dist(tup[i]) for i in range(2, 33, 2)]) for tup in step_hidden]
    att = [div([dist(tup[i]) for i in range(1, 32, 2)]) for tup in step_attn]
    return np.mean(hid, axis=0), np.mean(att, axis=0)


def generate_style(t):
    """What ``generate(output_hidden_states, output_attentions)`` returns for the trace."""
    hs = torch.from_numpy(t["hidden_states"]).double()
    at = torch.from_numpy(t["attentions"]).double()
    P, n = t["prompt_len"], t["answer_len"]
    step_hidden = [tuple(h[None, :P] for h in hs)]
    step_attn = [tuple(a[None, :, :P, :P] for a in at)]
    for s in range(1, n):  # step s feeds the token chosen at step s - 1: row P + s - 1
        r = P + s - 1
        step_hidden.append(tuple(h[None, r : r + 1] for h in hs))
        step_attn.append(tuple(a[None, :, r : r + 1, : r + 1] for a in at))
    return step_hidden, step_attn


@pytest.mark.parametrize("n", [1, 2, 5])
def test_matches_the_reference_on_a_32_layer_model(n):
    t = random_trace(32, P=6, n=n, heads=3, H=16, seed=n)
    want_h, want_a = reference_shift(*generate_style(t))
    out = HalluShiftStats().compute(t, {})
    np.testing.assert_allclose(out[:30], want_h, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(out[30:60], want_a, rtol=1e-5, atol=1e-12)


# ---------------------------------------------------------------------- probability features


def test_probability_features_of_a_known_sequence():
    q = np.array([0.9, 0.05, 0.5, 0.2])
    ent = np.array([0.1, 2.0, 1.0, 0.5])
    got = dict(zip(PROB_FEATURES, probability_features(np.log(q), ent), strict=True))
    want = {
        "min_max_prob": 0.05,
        "max_spread": 0.9,
        "norm_entropy_max": -(q * np.log(q)).sum() / np.log(4),
        "mean_step_entropy": 0.9,
        "low_prob_count_max": 1,
        "num_steps": 4,
        "mean_grad_max": (0.85 + 0.45 + 0.3) / 3,
        "mean_grad_entropy": (1.9 + 1.0 + 0.5) / 3,
        "p25_max": 0.05 + 0.75 * 0.15,  # sorted .05 .2 .5 .9, linear interpolation
        "p50_max": 0.35,
        "p75_max": 0.5 + 0.25 * 0.4,
    }
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k


def test_probability_features_of_a_single_step():
    got = probability_features(np.log([0.3]), np.array([1.2]))
    np.testing.assert_allclose(got, [0.3, 0.3, 0.0, 1.2, 0, 1, 0.0, 0.0, 0.3, 0.3, 0.3])
    assert (probability_features(np.zeros(0), np.zeros(0)) == 0).all()


def test_statistic_reads_every_answer_step_for_the_probability_features():
    t = random_trace(5, n=4, seed=9)
    out = HalluShiftStats().compute(t, {})
    want = probability_features(np.array(t["token_logprobs"]), np.array(t["token_entropy"]))
    np.testing.assert_allclose(out[-11:], want, rtol=1e-6)
    assert out[-11 + PROB_FEATURES.index("num_steps")] == 4  # end-of-turn step included


# ---------------------------------------------------------------------------- on a real run


def test_hallushift_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    a = FeatureTable.from_run(run).stat("hallushift")
    L = TraceStore(run).info["num_layers"]
    assert a.shape == (24, num_features(L)) and np.isfinite(a).all()
    t = TraceStore(run)[3]
    np.testing.assert_allclose(a[3], get_statistic("hallushift").compute(t, {}), rtol=1e-6)
    m = len(sampled_layers(L)) - 1
    assert (a[:, :m] >= 0).all() and (a[:, m : 2 * m] <= 1 + 1e-6).all()
    assert (
        a[:, -11 + PROB_FEATURES.index("num_steps")]
        == [r["answer_len"] for r in TraceStore(run).manifest]
    ).all()

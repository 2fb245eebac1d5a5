"""LLM-Check's attention statistic on hand-built attention maps with known diagonals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hallugraph.features import FeatureTable, get_statistic
from hallugraph.store import TraceStore


def uniform_causal(S: int) -> np.ndarray:
    """Row i attends uniformly to positions 0..i: diagonal 1 / (i + 1)."""
    return np.tril(np.ones((S, S))) / np.arange(1, S + 1)[:, None]


def test_llmcheck_attn_of_known_diagonals():
    S, p, n = 7, 3, 4  # answer = positions 3..6, the last one the end-of-turn token
    uni = uniform_causal(S)
    eye = np.eye(S)
    half = 0.5 * uni + 0.5 * eye  # diagonal (1 / (i + 1) + 1) / 2
    attn = np.stack([np.stack([uni, eye]), np.stack([half, uni])])  # [L=2, heads=2, S, S]
    t = {"attentions": attn.astype(np.float32), "prompt_len": p, "answer_len": n, "finished": True}
    out = get_statistic("llmcheck_attn").compute(t, {})
    assert out.shape == (2, 2) and out.dtype == np.float32
    i = np.arange(p, p + n)  # the whole response, end-of-turn token included (as the reference)
    want_uni = np.mean(-np.log(i + 1))
    want_half = np.mean(np.log((1 / (i + 1) + 1) / 2))
    np.testing.assert_allclose(out, [[want_uni, 0.0], [want_half, want_uni]], rtol=1e-6)


def test_llmcheck_attn_clamps_underflowed_weights():
    S = 4
    attn = uniform_causal(S)[None, None].astype(np.float16).copy()
    attn[0, 0, 3, 3] = 0.0  # fp16 flush to zero
    t = {"attentions": attn, "prompt_len": 2, "answer_len": 2, "finished": False}
    out = get_statistic("llmcheck_attn").compute(t, {})
    assert np.isfinite(out).all()
    assert out[0, 0] == pytest.approx(
        (np.log(float(np.float16(1 / 3))) + np.log(1e-8)) / 2, rel=1e-5
    )


def test_llmcheck_attn_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    a = FeatureTable.from_run(run).stat("llmcheck_attn")
    assert a.shape == (24, 2, 4) and np.isfinite(a).all() and (a <= 0).all()
    t = TraceStore(run)[3]
    p, n = t["prompt_len"], t["answer_len"]
    diag = np.diagonal(t["attentions"].astype(np.float64), axis1=-2, axis2=-1)[..., p : p + n]
    np.testing.assert_allclose(a[3], np.log(np.maximum(diag, 1e-8)).mean(-1), rtol=1e-5)

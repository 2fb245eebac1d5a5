"""Export calibration of the JumpReLU thresholds, the held-out token budget and the dead-feature
curve of ``transcoders eval`` (tiny random Llama)."""

from __future__ import annotations

import json

import pytest
import torch

from hallugraph.attribution.transcoders import SkipTranscoder, evaluate_set, load_set
from hallugraph.attribution.transcoders.calibrate import (
    activation_tails,
    calibrate_set,
    feature_caps,
    thresholds_for_l0,
)
from hallugraph.attribution.transcoders.config import TrainConfig
from hallugraph.attribution.transcoders.io import write_manifest, write_transcoder_set

TEXTS = [
    f"<|im_start|>user\nQuestion {i}: where is {w}?<|im_end|>\n<|im_start|>assistant\nIn {w}."
    for i, w in enumerate(["Paris", "a fox den", "the sky", "Rome", "the sea", "Oslo"] * 2)
]


def _layers(n_layers: int, d: int, width: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    out = []
    for i in range(n_layers):
        tc = SkipTranscoder(d, width, 4, seed=i)
        tc.set_skip(torch.randn(d, d, dtype=torch.float64) * 0.1, torch.zeros(d).double())
        tc.in_scale.fill_(1.0)
        tc.res_scale.fill_(0.5)
        tc.threshold.fill_(0.05)  # low: ~half the features fire
        out.append(tc.export())
    return out


def test_thresholds_for_l0_cut_to_the_target_but_keep_every_feature():
    # 10 tokens; feature 0 fires 60 times (values 41..100), feature 1 30 times (11..40),
    # feature 2 three times (1, 2, 3: rare), all above their old threshold 0.5
    vals = torch.cat(
        [torch.arange(41.0, 101.0), torch.arange(11.0, 41.0), torch.tensor([1.0, 2, 3])]
    )
    cols = torch.tensor([0] * 60 + [1] * 30 + [2] * 3)
    old = torch.full((3,), 0.5)
    cap = feature_caps(vals, cols, old, keep=4)
    # just below the 4th largest; rare feature 2 left as it was
    assert 96.99 < cap[0] < 97.0 and 36.99 < cap[1] < 37.0 and cap[2] == 0.5
    # tied top values (a context repeated with another answer) still count as `keep` firings
    tied = feature_caps(
        torch.tensor([5.0, 5, 5, 5, 5, 4]), torch.zeros(6, dtype=torch.long), old[:1], 2
    )
    assert int((torch.tensor([5.0, 5, 5, 5, 5, 4]) > tied[0]).sum()) == 5
    th, theta = thresholds_for_l0(vals, cols, 10, 3.0, old, keep=4)
    on = vals > th[cols]
    assert int(on.sum()) <= 30 and int(on.sum()) >= 29  # L0 3 on 10 tokens
    kept = [int(on[cols == f].sum()) for f in range(3)]
    assert kept[0] >= 4 and kept[1] >= 4 and kept[2] == 3  # nobody switched off
    assert (th >= old).all() and theta is not None
    # keep = 0: one global cut, the rare feature goes
    th0, _ = thresholds_for_l0(vals, cols, 10, 3.0, old, keep=0)
    assert int((vals > th0[cols])[cols == 2].sum()) == 0
    # already below the target: nothing changes
    same, none = thresholds_for_l0(vals, cols, 10, 12.0, old)
    assert none is None and torch.equal(same, old)


def test_calibrated_set_meets_the_target_and_never_lowers(tiny_lm, tmp_path):
    layers = _layers(tiny_lm.num_layers, 32, 64)
    src = write_transcoder_set(tmp_path / "src", layers)
    write_manifest(src, {"name": "src", "eval": {"stale": 1}, "tokens": 5})
    (src / "skip.safetensors").write_bytes(b"skip")  # copied as it is
    before = evaluate_set(tiny_lm, layers, {"t": TEXTS}, progress=False)["t"]
    l0_before = [r["l0"] for r in before]
    assert min(l0_before) > 12  # the test is meaningful: every layer above the target
    entry = calibrate_set(
        src, tmp_path / "dst", target_l0=8.0, lm=tiny_lm, texts=TEXTS, progress=False
    )
    new = load_set(tmp_path / "dst")
    after = evaluate_set(tiny_lm, new, {"t": TEXTS}, progress=False)["t"]
    for r, rec in zip(after, entry["layers"], strict=True):
        assert r["l0"] <= 8.0 + 1e-9 and r["l0"] > 6.0  # at the target on these texts
        assert rec["l0"] == pytest.approx(r["l0"])  # the manifest's L0 is the measured one
        assert rec["features_switched_off"] == 0 and rec["features_fired"] > 0
    for old, t in zip(layers, new, strict=True):
        th = t["activation_function.threshold"]
        assert (th >= old["activation_function.threshold"]).all()
        assert torch.equal(t["W_enc"], old["W_enc"]) and torch.equal(t["W_skip"], old["W_skip"])
    m = json.loads((tmp_path / "dst" / "manifest.json").read_text())
    assert "eval" not in m and m["name"] == "dst" and m["calibration"]["target_l0"] == 8.0
    assert (tmp_path / "dst" / "skip.safetensors").read_bytes() == b"skip"
    # a target above today's L0 changes nothing (thresholds are never lowered)
    tails = activation_tails(tiny_lm, layers, TEXTS, progress=False)
    calibrate_set(src, tmp_path / "same", target_l0=1e6, texts=TEXTS, tails=tails)
    for old, t in zip(layers, load_set(tmp_path / "same"), strict=True):
        assert torch.equal(t["activation_function.threshold"], old["activation_function.threshold"])
    with pytest.raises(ValueError, match="target L0"):
        calibrate_set(src, tmp_path / "x", target_l0=0.0, texts=TEXTS, tails=tails)


def test_dead_curve_counts_first_activations(tiny_lm, monkeypatch):
    from hallugraph.attribution.transcoders import evaluate

    monkeypatch.setattr(evaluate, "DEAD_AT", (3, 20, 10**9))
    layers = _layers(tiny_lm.num_layers, 32, 64)
    rows = evaluate_set(tiny_lm, layers, {"t": TEXTS}, progress=False, batch_texts=4)["t"]
    for r in rows:
        assert set(r["dead_at"]) == {"3", "20"}  # only counts up to the set's size
        assert r["dead_at"]["3"] >= r["dead_at"]["20"] >= r["dead_frac"]
    # direct count on layer 0 over the first 3 tokens of the first batch
    import numpy as np

    from hallugraph.attribution.transcoders import exported_forward
    from hallugraph.attribution.transcoders.train import capture

    ids = [np.array(tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:4]]
    ins, _ = capture(tiny_lm.model, ids, tiny_lm.tokenizer.pad_token_id)
    _, a = exported_forward(layers[0], ins[0])
    assert rows[0]["dead_at"]["3"] == pytest.approx(float((~(a[:3] > 0).any(0)).float().mean()))


def test_eval_text_budget_and_order(tiny_lm):
    from hallugraph.attribution.transcoders.corpus import _cut

    add = not tiny_lm.use_chat_template
    n_tok = [len(tiny_lm.tokenizer(t, add_special_tokens=add)["input_ids"]) - 1 for t in TEXTS]
    cut = _cut(tiny_lm, TEXTS, None, n_tok[0] + n_tok[1] + 1)
    assert cut == TEXTS[:3]  # up to the text that reaches the budget
    assert _cut(tiny_lm, TEXTS, 2, None) == TEXTS[:2]


def test_configs_saved_before_these_fields_keep_their_behaviour():
    old = TrainConfig(k=48).to_dict()
    del old["resample_init"], old["export_l0"]
    cfg = TrainConfig.from_dict(old)
    assert cfg.resample_init == "token" and cfg.export_l0 == 0.0
    assert TrainConfig().resample_init == "calibrated"
    with pytest.raises(ValueError, match="resample_init"):
        TrainConfig(resample_init="x")

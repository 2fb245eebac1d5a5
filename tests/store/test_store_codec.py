"""The predictive codec: exact residual coding, bit-identical read back, resume, wrong model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from tiny_models import extract_toy, make_tiny_lm, toy_examples

import hallugraph.store.writer as store_mod
from hallugraph.extract import GenerationSettings
from hallugraph.store import StoreError, TraceStore, TraceWriter, pack_tril
from hallugraph.store.codec import (
    Predictor,
    as_predictor,
    bytes_to_residuals,
    decode_trace,
    encode_trace,
    from_ordered_int,
    ordered_int,
    residuals_to_bytes,
)

QUESTIONS = [f"{w} question {i} about the fox?" for i, w in enumerate(["Who", "What", "Which"] * 2)]


def toy():
    return toy_examples(QUESTIONS, "c")


def extract(lm, out, codec="fp16", **kw):
    gs = GenerationSettings(max_new_tokens=5, batch_size=3)
    return extract_toy(lm, out, toy(), gs, shard_size=2, codec=codec, **kw)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_residual_bytes_roundtrip(width):
    rng = np.random.default_rng(width)
    top = {1: 127, 2: 32767, 4: 65535}[width]
    r = rng.integers(-top, top + 1, size=(3, 5, 7)).astype(np.int64)
    r.flat[:4] = [-top, top, 0, -1]
    if width == 4:
        r.flat[4:6] = [-(2**31), 2**31 - 1]  # the codec's whole range and beyond
    blob = residuals_to_bytes(r)
    assert blob[0] == width
    np.testing.assert_array_equal(bytes_to_residuals(blob, r.size).reshape(r.shape), r)
    np.testing.assert_array_equal(
        bytes_to_residuals(np.frombuffer(blob, np.uint8), r.size), r.ravel()
    )
    empty = residuals_to_bytes(np.zeros(0, np.int64))
    assert bytes_to_residuals(empty, 0).size == 0


def test_ordered_int_is_monotone_and_one_to_one():
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    o = ordered_int(every)
    assert len(np.unique(o)) == 2**16 and o.min() == -(2**15) and o.max() == 2**15 - 1
    np.testing.assert_array_equal(bits(from_ordered_int(o)), bits(every))
    finite = every[np.isfinite(every)]
    order = np.argsort(ordered_int(finite))
    assert np.all(np.diff(finite[order].astype(np.float64)) >= 0)
    assert ordered_int(np.float16(-0.0)) == -1 and ordered_int(np.float16(0.0)) == 0


def test_encode_decode_trace_exact_even_for_a_bad_prediction(tiny_lm):
    pred = Predictor(tiny_lm)
    rng = np.random.default_rng(0)
    S, p, L, H, nh = 9, 3, pred.num_layers, pred.hidden_size, pred.num_heads
    tokens = list(rng.integers(3, 100, S))
    # random tensors (nothing like the model's): still lossless (raw or wide residual blocks)
    hidden = rng.standard_normal((L + 1, S, H)).astype(np.float16)
    hidden[1, 4, :3] = [np.inf, -0.0, np.nan]
    att = rng.random((L, nh, S * (S + 1) // 2 - p * (p + 1) // 2)).astype(np.float16)
    enc = encode_trace(pred, tokens, hidden[:, :p], hidden[:, p:], att)
    assert all(v.dtype == np.uint8 for v in enc.values())
    h, a = decode_trace(pred, tokens, hidden[:, :p], enc)
    np.testing.assert_array_equal(bits(h), bits(hidden[:, p:]))
    np.testing.assert_array_equal(bits(a), bits(att))
    h2, a2 = decode_trace(pred, tokens, hidden[:, :p], enc, attentions=False)
    assert a2 is None and np.array_equal(bits(h2), bits(h))


@pytest.mark.parametrize("kernel", ["aten", "auto"])
def test_model_like_trace_round_trips_with_each_kernel(tiny_lm, kernel):
    """Encode the model's own forward pass with each matmul kernel: exact, and small."""
    import torch

    pred = Predictor(tiny_lm, kernel=kernel)
    assert pred.kernel in ("aten", "onednn") and (kernel == "auto" or pred.kernel == kernel)
    tokens = list(range(5, 25))
    with torch.no_grad():
        out = tiny_lm.model(
            torch.tensor([tokens]), output_hidden_states=True, output_attentions=True
        )
    hidden = torch.stack(out.hidden_states)[:, 0].numpy().astype(np.float16)
    att = pack_tril(torch.stack(out.attentions)[:, 0].numpy().astype(np.float16), 4)
    enc = encode_trace(pred, tokens, hidden[:, :4], hidden[:, 4:], att)
    assert sum(v.size for v in enc.values()) < (hidden[:, 4:].nbytes + att.nbytes) / 2
    h, a = decode_trace(pred, tokens, hidden[:, :4], enc)
    np.testing.assert_array_equal(bits(h), bits(hidden[:, 4:]))
    np.testing.assert_array_equal(bits(a), bits(att))
    other = "aten" if pred.kernel == "onednn" else "onednn"
    with pytest.raises(StoreError, match="kernel"):
        as_predictor(pred, other)


def test_predictive_reads_back_bit_identical(tiny_lm, tmp_path):
    plain = extract(tiny_lm, tmp_path / "plain")
    pred = extract(tiny_lm, tmp_path / "pred", codec="predictive")
    assert plain.total == pred.total == len(QUESTIONS)
    info = json.loads((tmp_path / "pred" / "run.json").read_text())
    assert info["codec"] == "predictive" and len(info["codec_fingerprint"]) == 32
    assert TraceStore(tmp_path / "plain").codec == "fp16"
    a, b = TraceStore(tmp_path / "plain"), TraceStore(tmp_path / "pred", model=tiny_lm)
    for x, y in zip(a, b, strict=True):  # iteration
        assert x["question_id"] == y["question_id"]
        for field in ("hidden_states", "attentions"):
            assert x[field].dtype == y[field].dtype == np.float16
            np.testing.assert_array_equal(bits(x[field]), bits(y[field]))
    for i in range(len(a)):  # random access, and one field at a time
        np.testing.assert_array_equal(bits(a[i]["attentions"]), bits(b[i]["attentions"]))
        only = b.get(i, fields=("attentions",))
        assert "hidden_states" not in only
        np.testing.assert_array_equal(bits(only["attentions"]), bits(a[i]["attentions"]))
    np.testing.assert_array_equal(
        bits(b.get(2, fields=["hidden_states"])["hidden_states"]), bits(a[2]["hidden_states"])
    )
    # the shards hold uint8 residual blocks (mode byte 1), smaller than the plain fp16 ones
    shards = sorted((tmp_path / "pred" / "shards").glob("*.safetensors"))
    with safe_open(str(shards[0]), framework="np") as fh:
        assert all(fh.get_tensor(k)[1] == 1 for k in fh.keys())
    plain_shards = sorted((tmp_path / "plain" / "shards").glob("*.safetensors"))
    assert sum(f.stat().st_size for f in shards) < sum(f.stat().st_size for f in plain_shards)


def test_other_arithmetic_is_refused_unless_verify_false(tiny_lm, tmp_path, monkeypatch):
    """A reader whose prediction comes out differently (another machine or torch build) gets an
    error by default; with verify=False it gets values within a few fp16 ulps."""
    extract(tiny_lm, tmp_path / "pred", codec="predictive")
    exact = TraceStore(tmp_path / "pred", model=tiny_lm)[0]
    layer = Predictor.layer

    def other_rounding(self, *args, **kwargs):  # the prediction moved by one ulp, here and there
        hid, att = layer(self, *args, **kwargs)
        hid = hid.copy()
        hid.reshape(-1)[::7] = np.nextafter(hid.reshape(-1)[::7], np.float16(np.inf))
        return hid, att

    monkeypatch.setattr(Predictor, "layer", other_rounding)
    with pytest.raises(StoreError, match="verify=False"):
        TraceStore(tmp_path / "pred", model=tiny_lm)[0]
    loose = TraceStore(tmp_path / "pred", model=tiny_lm, verify=False)[0]
    a, b = (t["hidden_states"].astype(np.float32) for t in (loose, exact))
    err = np.abs(a - b).max(axis=(1, 2)) / np.abs(b).max(axis=(1, 2))
    assert 0 < err.max() < 1e-2  # off, by about fp16 rounding: not other numbers


def test_predictive_resume_after_kill(tiny_lm, tmp_path, monkeypatch):
    extract(tiny_lm, tmp_path / "full", codec="predictive")
    real_save = store_mod.atomic_save

    def killed_on_second_shard(tensors, path, metadata=None):
        if "unit_00001" in path.name:
            raise KeyboardInterrupt
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(store_mod, "atomic_save", killed_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        extract(tiny_lm, tmp_path / "killed", codec="predictive")
    monkeypatch.setattr(store_mod, "atomic_save", real_save)
    assert len(TraceStore(tmp_path / "killed")) == 2
    with pytest.raises(StoreError, match="codec"):  # resuming with the other codec is refused
        extract(tiny_lm, tmp_path / "killed")
    summary = extract(tiny_lm, tmp_path / "killed", codec="predictive")
    assert summary.processed == len(QUESTIONS) - 2
    full = TraceStore(tmp_path / "full", model=tiny_lm)
    resumed = TraceStore(tmp_path / "killed", model=tiny_lm)
    for x, y in zip(full, resumed, strict=True):
        np.testing.assert_array_equal(bits(x["hidden_states"]), bits(y["hidden_states"]))
        np.testing.assert_array_equal(bits(x["attentions"]), bits(y["attentions"]))


def test_other_weights_are_refused(tiny_lm, tmp_path, monkeypatch):
    import hallugraph.models as models

    extract(tiny_lm, tmp_path, codec="predictive")
    other = make_tiny_lm(seed=1)
    store = TraceStore(tmp_path, model=other)
    assert store.get(0, fields=())["question_id"] == "c0"  # metadata needs no model
    with pytest.raises(StoreError, match="fingerprint"):
        store[0]
    # without a model, the run's model is loaded by name, on the CPU, in the run's dtype
    calls = []

    def load(name, **kw):
        calls.append((name, kw))
        if len(calls) == 1:
            raise models.ModelError("no such model offline")
        return other

    monkeypatch.setattr(models, "load_model", load)
    with pytest.raises(StoreError, match="could not be loaded"):
        TraceStore(tmp_path)[0]
    assert calls == [("tiny", {"dtype": "float32", "device": "cpu"})]
    with pytest.raises(StoreError, match="fingerprint"):
        TraceStore(tmp_path)[0]


def test_corrupt_block_fails_loudly(tiny_lm, tmp_path):
    pred = Predictor(tiny_lm)
    rng = np.random.default_rng(3)
    tokens = list(rng.integers(3, 100, 6))
    L, H, nh = pred.num_layers, pred.hidden_size, pred.num_heads
    hidden = rng.standard_normal((L + 1, 6, H)).astype(np.float16)
    att = rng.random((L, nh, 21)).astype(np.float16)
    enc = encode_trace(pred, tokens, hidden[:, :0], hidden, att)
    enc["hidden_states"] = enc["hidden_states"].copy()
    enc["hidden_states"][12] ^= 1  # the checksum
    with pytest.raises(StoreError, match="checksum"):
        decode_trace(pred, tokens, hidden[:, :0], enc)


def test_predictive_needs_fp16(tiny_lm, tmp_path):
    with pytest.raises(StoreError, match="float16"):
        extract(tiny_lm, tmp_path / "a", codec="predictive", dtype="float32")
    assert not (tmp_path / "a").exists()
    with pytest.raises(StoreError, match="float16"):
        TraceWriter(tmp_path / "b", {}, shard_name="x", dtype="float32", codec="predictive")
    with pytest.raises(StoreError, match="predictor"):
        TraceWriter(tmp_path / "c", {}, shard_name="x", codec="predictive")
    with pytest.raises(StoreError, match="codec"):
        TraceWriter(tmp_path / "d", {}, shard_name="x", codec="zip")


def test_keep_tensors_no_with_predictive_is_refused(tiny_lm, tmp_path):
    with pytest.raises(StoreError, match="keep-tensors no"):
        extract(tiny_lm, tmp_path / "lean", codec="predictive", keep_tensors=False)
    assert not (tmp_path / "lean").exists()

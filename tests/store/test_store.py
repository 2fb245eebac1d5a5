"""The store: round trip, packing, resume after a kill, atomic shards, errors, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tiny_models import extract_toy, toy_examples

import hallugraph.store.writer as store_mod
from hallugraph.extract import GenerationSettings
from hallugraph.store import StoreError, TraceStore, TraceWriter, pack_tril, tril_size, unpack_tril

QUESTIONS = [f"Question number {i} about Paris?" for i in range(7)]


def toy(n=7):
    return toy_examples(QUESTIONS[:n], "t")


def fake_trace(rng, S, L=2, heads=3, H=4, tokens=None):
    attn = np.tril(rng.random((L, heads, S, S))).astype(np.float32)
    attn /= attn.sum(-1, keepdims=True)
    meta = {"question_id": f"id{S}", "tokens": tokens or list(range(S)), "seq_len": S}
    return meta, rng.standard_normal((L + 1, S, H)).astype(np.float32), attn


def test_pack_unpack_tril_roundtrip():
    rng = np.random.default_rng(0)
    a = np.tril(rng.random((2, 3, 5, 5)))
    flat = pack_tril(a)
    assert flat.shape == (2, 3, tril_size(5))
    np.testing.assert_array_equal(unpack_tril(flat, 5), a)
    # rows >= 3 are the tail of the flat layout
    np.testing.assert_array_equal(pack_tril(a, start_row=3), flat[..., tril_size(3) :])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_writer_reader_roundtrip_with_shared_prefix(tmp_path, dtype):
    rng = np.random.default_rng(1)
    w = TraceWriter(
        tmp_path,
        {"model": "m"},
        shard_name="m_d",
        shard_size=2,
        dtype=dtype,
        prefix_tokens=[0, 1, 2],
    )
    originals = [fake_trace(rng, S) for S in (5, 7, 4)]
    # the prefix rows are the same for every trace, as under a causal mask
    for _meta, hs, at in originals[1:]:
        hs[:, :3] = originals[0][1][:, :3]
        at[..., :3, :3] = originals[0][2][..., :3, :3]
    for t in originals:
        w.add(*t)
    w.close()
    s = TraceStore(tmp_path)
    assert len(s) == 3 and len(s.shards) == 2
    assert s.shards[0] == "m_d_batch_0000.safetensors"
    tol = 1e-3 if dtype == "float16" else 0
    for (meta, hs, at), got in zip(originals, s, strict=True):
        assert got["hidden_states"].dtype == np.dtype(dtype)
        np.testing.assert_allclose(got["hidden_states"], hs, rtol=tol, atol=tol)
        np.testing.assert_allclose(got["attentions"], at, rtol=tol, atol=tol)
        assert got["question_id"] == meta["question_id"]
    # random access equals streaming; only the asked-for tensors are read
    np.testing.assert_array_equal(s[2]["attentions"], list(s)[2]["attentions"])
    assert "attentions" not in s.get(0, fields=["hidden_states"])
    with pytest.raises(IndexError):
        s[3]


def test_trace_must_start_with_prefix(tmp_path):
    rng = np.random.default_rng(2)
    w = TraceWriter(tmp_path, {}, shard_name="x", prefix_tokens=[9, 9])
    with pytest.raises(StoreError, match="shared prefix"):
        w.add(*fake_trace(rng, 4))


def test_no_pickle_files(tmp_path, tiny_lm):
    extract_toy(tiny_lm, tmp_path, toy(3), GenerationSettings(max_new_tokens=3))
    suffixes = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".jsonl", ".safetensors"}


def _run(tiny_lm, out, n=7, **kw):
    """The store tests' run: the first ``n`` toy questions, two per unit."""
    gs = GenerationSettings(max_new_tokens=5, batch_size=2)
    return extract_toy(tiny_lm, out, toy(n), gs, shard_size=2, **kw)


def _manifest(path):
    return [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines()]


def test_resume_after_kill_gives_same_manifest(tiny_lm, tmp_path, monkeypatch):
    _run(tiny_lm, tmp_path / "full")
    real_save = store_mod.atomic_save
    calls = {"n": 0}

    def killed_on_third_shard(tensors, path, metadata=None):
        if "unit_00002" in path.name:
            # die half-way through writing: a partial temporary file, then the process stops
            path.with_name(path.name + ".tmp").write_bytes(b"partial")
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(store_mod, "atomic_save", killed_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_lm, tmp_path / "killed")
    killed = tmp_path / "killed"
    assert len(_manifest(killed)) == 4  # two whole shards are published, nothing else
    assert not (killed / "shards" / "tiny_toy_unit_00002.safetensors").exists()
    monkeypatch.setattr(store_mod, "atomic_save", real_save)
    summary = _run(tiny_lm, killed)
    assert summary.processed == 3 and summary.total == 7
    assert _manifest(killed) == _manifest(tmp_path / "full")
    full, resumed = TraceStore(tmp_path / "full"), TraceStore(killed)
    for a, b in zip(full, resumed, strict=True):
        np.testing.assert_array_equal(a["attentions"], b["attentions"])
    # a second re-run has nothing left to do
    assert _run(tiny_lm, killed).processed == 0


def test_resume_with_other_arguments_is_refused(tiny_lm, tmp_path):
    _run(tiny_lm, tmp_path)
    with pytest.raises(StoreError, match="other arguments"):
        extract_toy(tiny_lm, tmp_path, toy(), GenerationSettings(max_new_tokens=9), shard_size=2)


def test_one_bad_example_is_counted_not_fatal(tiny_lm, tmp_path, monkeypatch):
    import hallugraph.pipeline.worker as pipe

    real = pipe.capture_batch

    def flaky(lm, batch, gs, prefix=()):
        if any(p.example.id == "t3" for p in batch):
            raise RuntimeError("boom on t3")
        return real(lm, batch, gs, prefix)

    monkeypatch.setattr(pipe, "capture_batch", flaky)
    summary = _run(tiny_lm, tmp_path)
    assert summary.errors == 1 and summary.total == 6
    err = [json.loads(x) for x in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert err == [{"question_id": "t3", "error": "RuntimeError: boom on t3"}]
    monkeypatch.setattr(pipe, "capture_batch", real)
    # retried on resume: the unit of t3 (t2, t3) is extracted again, whole
    summary = _run(tiny_lm, tmp_path)
    assert summary.processed == 2 and summary.errors == 0 and summary.total == 7
    assert (tmp_path / "errors.jsonl").read_text() == ""
    assert [r["question_id"] for r in _manifest(tmp_path)] == [f"t{i}" for i in range(7)]


def test_not_a_run_dir(tmp_path):
    with pytest.raises(StoreError, match="not a hallugraph run"):
        TraceStore(tmp_path)


def test_keep_tensors_no_keeps_statistics_only(tiny_lm, tmp_path):
    from hallugraph.features import compute_stats

    _run(tiny_lm, tmp_path / "full")
    _run(tiny_lm, tmp_path / "lean", keep_tensors=False)
    lean = TraceStore(tmp_path / "lean")
    assert not list((tmp_path / "lean" / "shards").glob("*.safetensors"))
    assert (tmp_path / "lean" / "stats" / "logit").is_dir()
    # statistics from the pruned run equal those computed from the full one
    a = compute_stats(tmp_path / "full", ["logit"], progress=False)["logit"]
    b = compute_stats(lean, ["logit"], progress=False)["logit"]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(StoreError, match="not kept"):
        lean[0]
    assert lean.get(0, fields=())["question_id"] == "t0"


# ------------------------------------------------------------------ issue 15: faults on resume


def _flip(path, n=64):
    import struct

    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    mid = start + (len(raw) - start) // 2
    for i in range(mid, mid + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("fault", ["deleted", "flipped", "truncated"])
def test_resume_redoes_the_traces_of_a_damaged_shard(tiny_lm, tmp_path, fault):
    _run(tiny_lm, tmp_path / "full")
    run = tmp_path / "damaged"
    _run(tiny_lm, run)
    shard = run / "shards" / "tiny_toy_unit_00001.safetensors"
    if fault == "deleted":
        shard.unlink()
    elif fault == "flipped":
        _flip(shard)
    else:
        shard.write_bytes(shard.read_bytes()[:-100])
    summary = _run(tiny_lm, run)
    assert list(summary.redone) == [shard.name] and summary.processed == 2
    assert summary.total == 7
    from hallugraph.features.verify import verify_run

    assert verify_run(run).ok
    # the redone traces are the same traces, in a shard of their own
    full = {t["question_id"]: t for t in TraceStore(tmp_path / "full")}
    for t in TraceStore(run):
        np.testing.assert_array_equal(t["hidden_states"], full[t["question_id"]]["hidden_states"])
        np.testing.assert_array_equal(t["attentions"], full[t["question_id"]]["attentions"])
    assert sorted(r["index"] for r in _manifest(run)) == list(range(7))
    assert _run(tiny_lm, run).processed == 0


def test_resume_of_a_pruned_run_redoes_a_shard_whose_statistics_are_lost(tiny_lm, tmp_path):
    run = tmp_path / "lean"
    _run(tiny_lm, run, keep_tensors=False)
    lost = run / "stats" / "logit" / "tiny_toy_unit_00001.safetensors"
    lost.unlink()
    summary = _run(tiny_lm, run, keep_tensors=False)
    assert list(summary.redone) == [lost.name] and summary.processed == 2
    assert summary.total == 7 and (run / "stats" / "logit" / summary.shards_written[0]).exists()
    from hallugraph.features.verify import verify_run

    assert verify_run(run).ok


def test_run_dir_without_run_json_is_refused(tiny_lm, tmp_path):
    _run(tiny_lm, tmp_path)
    (tmp_path / "run.json").unlink()
    before = (tmp_path / "manifest.jsonl").read_bytes()
    with pytest.raises(StoreError, match="no run.json"):
        _run(tiny_lm, tmp_path, max_shard_mb=1.0)
    assert not (tmp_path / "run.json").exists()
    assert (tmp_path / "manifest.jsonl").read_bytes() == before


def test_max_shard_mb_and_device_are_recorded_and_a_resume_may_not_change_them(tiny_lm, tmp_path):
    _run(tiny_lm, tmp_path, max_shard_mb=4096.0)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["max_shard_mb"] == 4096.0 and info["device"] == "cpu"
    with pytest.raises(StoreError, match="max_shard_mb"):
        _run(tiny_lm, tmp_path, max_shard_mb=0.001)


def test_truncated_run_json_names_the_file(tiny_lm, tmp_path):
    _run(tiny_lm, tmp_path)
    text = (tmp_path / "run.json").read_text()
    (tmp_path / "run.json").write_text(text[: len(text) // 2])
    with pytest.raises(StoreError, match=r"run\.json is damaged"):
        TraceStore(tmp_path)
    with pytest.raises(StoreError, match=r"run\.json is damaged"):
        _run(tiny_lm, tmp_path)
    (tmp_path / "run.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(StoreError, match=r"run\.json is damaged"):
        TraceStore(tmp_path)


def test_out_pointing_to_a_file_is_refused(tiny_lm, tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    with pytest.raises(StoreError, match="is a file"):
        _run(tiny_lm, f)
    assert f.read_text() == "keep me"


def test_leftover_temporary_files_are_cleaned_on_resume(tiny_lm, tmp_path):
    _run(tiny_lm, tmp_path, keep_tensors=False)
    left = [
        tmp_path / "shards" / "tiny_toy_batch_0004.safetensors.tmp",  # older versions' names
        tmp_path / "manifest.jsonl.4242.tmp",
        tmp_path / "stats" / "logit" / "tiny_toy_batch_0000.safetensors.4242.tmp",
        tmp_path / "shards" / ".tiny_toy_batch_0004.safetensors.4242.0.tmp",  # hallugraph.io's
        tmp_path / ".run.json.4242.3.tmp",
    ]
    for p in left:
        p.write_bytes(b"partial")
    _run(tiny_lm, tmp_path, keep_tensors=False)
    assert not [p for p in left if p.exists()]


def test_kill_between_shared_file_and_its_checksum_is_recovered(tiny_lm, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = store_mod.write_run_info

    def dies_on_second_write(run_dir, info):
        calls["n"] += 1
        if calls["n"] == 2:  # 1: run.json at start; 2: the shared prefix's checksum
            raise KeyboardInterrupt
        return real(run_dir, info)

    monkeypatch.setattr(store_mod, "write_run_info", dies_on_second_write)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_lm, tmp_path)
    assert (tmp_path / "shared.safetensors").exists()
    assert "shared_checksums" not in json.loads((tmp_path / "run.json").read_text())
    monkeypatch.setattr(store_mod, "write_run_info", real)
    _run(tiny_lm, tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["shared_checksums"]
    from hallugraph.features.verify import verify_run

    assert verify_run(tmp_path).ok


def test_errors_file_is_rewritten_whole(tiny_lm, tmp_path, monkeypatch):
    import hallugraph.pipeline.worker as pipe

    def always(lm, batch, gs, prefix=()):
        raise RuntimeError("nope")

    monkeypatch.setattr(pipe, "capture_batch", always)
    _run(tiny_lm, tmp_path)
    lines = (tmp_path / "errors.jsonl").read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(x)["error"] == "RuntimeError: nope" for x in lines)


def test_an_older_run_without_checksums_can_be_resumed(tiny_lm, tmp_path):
    from hallugraph.features.verify import verify_run

    _run(tiny_lm, tmp_path, 4)
    info = json.loads((tmp_path / "run.json").read_text())
    for k in ("checksum", "shared_checksums", "max_shard_mb", "device"):  # what old runs lack
        info.pop(k)
    (tmp_path / "run.json").write_text(json.dumps(info))
    rows = _manifest(tmp_path)
    for r in rows:
        del r["checksums"], r["row_checksum"]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(tmp_path / "units")  # nor part files: older versions wrote one shard at a time
    assert _run(tiny_lm, tmp_path).processed == 3
    rows = _manifest(tmp_path)
    assert ["checksums" in r for r in rows] == [False] * 4 + [True] * 3
    rep = verify_run(tmp_path)
    assert rep.ok and "no checksums recorded" in rep.render()
    assert len(list(TraceStore(tmp_path))) == 7

"""Integrity (issue 15): checksums on every stored array, checked on read; `verify` on a run.

Every fault is injected in the test: bytes flipped inside a shard's data, a truncated or
deleted file, an edited manifest row; each read must fail naming the damaged file.
"""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from hallugraph.features import compute_stats
from hallugraph.features.verify import verify_run
from hallugraph.store import TraceStore
from hallugraph.store.integrity import IntegrityError, array_digest, row_digest
from hallugraph.store.layout import MANIFEST, RUN_INFO


def flip_data_bytes(path, n=64, at=0.5):
    """Flip ``n`` bytes inside the tensor data of a safetensors file (not its header)."""
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    pos = start + int((len(raw) - start - n) * at)
    for i in range(pos, pos + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.fixture
def run(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def _shard(run, k=1):
    return sorted((run / "shards").glob("*.safetensors"))[k]


def test_digest_covers_bytes_dtype_and_shape():
    a = np.arange(12, dtype=np.float16)
    d = array_digest(a)
    assert d == array_digest(a.copy()) and len(d) == 32
    b = a.copy()
    b[3] = 7
    assert array_digest(b) != d
    assert array_digest(a.reshape(3, 4)) != d
    assert array_digest(a.astype(np.float32)) != d
    row = {"question_id": "q", "tokens": [1, 2], "label": 1}
    assert row_digest(row) == row_digest({**row, "label": 0})  # labels are added later
    assert row_digest(row) != row_digest({**row, "tokens": [1, 3]})


def test_a_new_run_records_checksums(run):
    store = TraceStore(run)
    assert store.has_checksums and store.info["shared_checksums"]
    for r in store.rows:
        assert set(r["checksums"]) == {"hidden_states", "attentions"}
        assert r["row_checksum"] == row_digest(r)
    rep = verify_run(run)
    assert rep.ok, rep.render()
    assert rep.tensors == 2 * len(store)


def test_flipped_bytes_in_a_shard_fail_every_read_naming_it(run):
    shard = _shard(run)
    clean = TraceStore(run)
    before = compute_stats(clean, ["logit"], progress=False)["logit"]
    shutil.rmtree(run / "stats")
    flip_data_bytes(shard)
    store = TraceStore(run)
    bad = [i for i, r in enumerate(store.rows) if r["shard"] == shard.name]
    with pytest.raises(IntegrityError, match=shard.name) as err:
        for i in bad:
            store[i]
    assert "checksum mismatch" in str(err.value)
    with pytest.raises(IntegrityError, match=shard.name):
        list(store.iter(shards=[shard.name]))
    with pytest.raises(IntegrityError, match=shard.name):  # reads both tensor fields
        compute_stats(run, ["lapeig", "hidden_last"], progress=False)
    # a statistic that reads no tensor is still computed, and unchanged
    after = compute_stats(run, ["logit"], progress=False)["logit"]
    np.testing.assert_array_equal(before, after)
    rep = verify_run(run)
    assert not rep.ok and any(shard.name in p for p in rep.problems)


def test_truncated_shard_names_the_file(run):
    shard = _shard(run, 0)
    shard.write_bytes(shard.read_bytes()[:-1000])
    store = TraceStore(run)
    with pytest.raises(IntegrityError, match=f"{shard.name}.*truncated or corrupt"):
        store[0]
    assert any(shard.name in p for p in verify_run(run).problems)


def test_missing_shard_of_a_run_that_kept_its_tensors_is_lost_not_pruned(run):
    shard = _shard(run, 0)
    shard.unlink()
    store = TraceStore(run)
    with pytest.raises(IntegrityError, match="missing") as err:
        store[0]
    assert "--keep-tensors no" not in str(err.value) and shard.name in str(err.value)
    assert any(shard.name in p and "missing" in p for p in verify_run(run).problems)


def test_flipped_shared_prefix_is_caught(run):
    flip_data_bytes(run / "shared.safetensors", n=16)
    with pytest.raises(IntegrityError, match="shared.safetensors"):
        TraceStore(run)[0]
    assert any("shared.safetensors" in p for p in verify_run(run).problems)


def test_edited_manifest_row_is_caught(run):
    lines = (run / MANIFEST).read_text().splitlines()
    row = json.loads(lines[3])
    row["token_logprobs"][0] += 1.0  # what a flipped digit does: a number changes silently
    lines[3] = json.dumps(row)
    (run / MANIFEST).write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError, match=r"manifest.jsonl:4"):
        TraceStore(run)
    assert not verify_run(run).ok


def test_damaged_statistics_cache_is_recomputed_with_a_warning(run, caplog):
    first = compute_stats(run, ["logit"], progress=False)["logit"]
    cache = sorted((run / "stats" / "logit").iterdir())[0]
    flip_data_bytes(cache, n=8)
    assert any(cache.name in p for p in verify_run(run).problems)
    with caplog.at_level("WARNING"):
        again = compute_stats(run, ["logit"], progress=False)["logit"]
    np.testing.assert_array_equal(first, again)
    assert str(cache) in caplog.text and "recomputing" in caplog.text
    # truncated: also recomputed (the old code raised SafetensorError without the path)
    cache.write_bytes(cache.read_bytes()[:40])
    np.testing.assert_array_equal(first, compute_stats(run, ["logit"], progress=False)["logit"])
    assert verify_run(run).ok


def test_damaged_cache_of_a_pruned_shard_is_an_error_naming_it(run):
    from hallugraph.store import mark_pruned

    compute_stats(run, ["lapeig"], progress=False)
    mark_pruned(run)
    for p in (run / "shards").glob("*.safetensors"):
        p.unlink()
    assert verify_run(run).ok  # pruned on purpose: the statistics are what is left
    cache = sorted((run / "stats" / "lapeig").iterdir())[0]
    flip_data_bytes(cache, n=8)
    with pytest.raises(IntegrityError, match=f"{cache.name}.*cannot be recomputed"):
        compute_stats(run, ["lapeig"], progress=False)
    cache.unlink()
    assert any(cache.name in p and "missing" in p for p in verify_run(run).problems)


def test_old_run_without_checksums_reads_and_verify_says_so(run):
    info = json.loads((run / RUN_INFO).read_text())
    for k in ("checksum", "shared_checksums"):
        info.pop(k)
    (run / RUN_INFO).write_text(json.dumps(info))
    rows = [json.loads(x) for x in (run / MANIFEST).read_text().splitlines()]
    for r in rows:
        r.pop("checksums"), r.pop("row_checksum")
    (run / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = TraceStore(run)
    assert not store.has_checksums and store[0]["hidden_states"].shape[0] == 3
    rep = verify_run(run)
    assert rep.ok and "no checksums recorded" in rep.render()
    # structural damage is still found without checksums
    _shard(run, 0).write_bytes(b"not a safetensors file")
    assert not verify_run(run).ok

"""Orchestration: shards bounded by bytes (long RAG prompts), the size estimate behind it."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from hallugraph.datasets import Example
from hallugraph.extract import GenerationSettings
from hallugraph.pipeline import estimate_trace_bytes, run_extract, shard_chunks
from hallugraph.store import TraceStore

ANSWERS = ["Paris", "It is Paris, the capital of France", "Lyon", "no idea at all here", "x"]


def _examples():
    return [
        Example(id=f"q{i}", question=f"Which city is number {i}?", references=("Paris",))
        for i in range(len(ANSWERS))
    ]


def _extract(tiny_lm, out, **kw):
    return run_extract(
        model="tiny",
        dataset="toy",
        out=out,
        lm=tiny_lm,
        progress=False,
        examples=_examples(),
        answers_from={f"q{i}": a for i, a in enumerate(ANSWERS)},
        settings=GenerationSettings(max_new_tokens=8, batch_size=2),
        **kw,
    )


def test_shard_chunks_bounds_count_and_bytes():
    sizes = [5, 5, 5, 20, 1, 1, 1]
    chunks = shard_chunks(list(range(7)), 3, lambda i: sizes[i], 11)
    assert chunks == [[0, 1], [2], [3], [4, 5, 6]]  # an item over the cap gets its own chunk
    assert shard_chunks(list(range(7)), 3, lambda i: sizes[i], None) == [[0, 1, 2], [3, 4, 5], [6]]
    assert shard_chunks([], 3, len, 10) == []
    with pytest.raises(ValueError, match="shard_size"):
        shard_chunks([1], 0, len, None)


def test_estimate_counts_rows_after_prefix_and_lower_triangle():
    # 4 tokens, 1 prefix row: 3 rows x 2 layer outputs x 5 dims of hidden states, and the
    # attention rows 1..3 of a 4x4 lower triangle (2 + 3 + 4 = 9 cells) x 1 layer x 2 heads
    assert estimate_trace_bytes(4, 1, num_layers=1, num_heads=2, hidden=5, itemsize=2) == 2 * (
        2 * 3 * 5 + 2 * 9
    )


def test_estimate_equals_stored_bytes_for_teacher_forced_traces(tiny_lm, tmp_path):
    _extract(tiny_lm, tmp_path / "run", shard_size=10)
    store = TraceStore(tmp_path / "run")
    cfg = tiny_lm.model.config
    prefix = int(store.info["prefix_len"])
    assert prefix > 0  # the chat template's prefix is shared
    with safe_open(str(store.shard_path(store.shards[0])), framework="np") as fh:
        for row in store.rows:
            stored = sum(
                fh.get_tensor(f"{row['key']}.{f}").nbytes for f in ("hidden_states", "attentions")
            )
            est = estimate_trace_bytes(
                len(row["tokens"]),
                prefix,
                cfg.num_hidden_layers,
                cfg.num_attention_heads,
                cfg.hidden_size,
                2,
            )
            assert stored == est, row["question_id"]


def test_max_shard_mb_splits_shards_and_keeps_every_trace(tiny_lm, tmp_path):
    whole = _extract(tiny_lm, tmp_path / "whole", shard_size=10)
    assert len(whole.shards_written) == 1
    cfg = tiny_lm.model.config
    one = estimate_trace_bytes(
        40, 0, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, 2
    )
    split = _extract(tiny_lm, tmp_path / "split", shard_size=10, max_shard_mb=2.5 * one / 2**20)
    assert len(split.shards_written) > 1
    a, b = TraceStore(tmp_path / "whole"), TraceStore(tmp_path / "split")
    assert [r["question_id"] for r in a.rows] == [r["question_id"] for r in b.rows]
    for i in range(len(a)):
        # other batches, other padding widths: the same numbers up to fp32 summation order,
        # so at most one fp16 rounding step apart
        assert a[i]["tokens"] == b[i]["tokens"]
        for field in ("hidden_states", "attentions"):
            x, y = (t[field].astype(np.float32) for t in (a[i], b[i]))
            np.testing.assert_allclose(x, y, rtol=2**-10, atol=1e-6)

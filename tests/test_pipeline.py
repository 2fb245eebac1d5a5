"""Orchestration: shards bounded by bytes (long RAG prompts), the size estimate behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from tiny_models import extract_toy

from hallugraph.data import Example
from hallugraph.extract import GenerationSettings
from hallugraph.pipeline import run_extract
from hallugraph.store import TraceStore
from hallugraph.store.sizing import estimate_trace_bytes, shard_chunks

ANSWERS = ["Paris", "It is Paris, the capital of France", "Lyon", "no idea at all here", "x"]


def _examples():
    return [
        Example(id=f"q{i}", question=f"Which city is number {i}?", references=("Paris",))
        for i in range(len(ANSWERS))
    ]


def _extract(tiny_lm, out, **kw):
    answers = {f"q{i}": a for i, a in enumerate(ANSWERS)}
    gs = GenerationSettings(max_new_tokens=8, batch_size=2)
    return extract_toy(tiny_lm, out, _examples(), gs, answers_from=answers, **kw)


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


# ------------------------------------------------------------- issue 15: guards before compute


def _spy_capture(monkeypatch):
    import hallugraph.pipeline.worker as pipe

    seen: list[str] = []
    real = pipe.capture_batch

    def spy(lm, batch, gs, prefix=()):
        seen.extend(p.example.id for p in batch)
        return real(lm, batch, gs, prefix)

    monkeypatch.setattr(pipe, "capture_batch", spy)
    return seen


def _long_examples():
    long_q = "Which city " + "is the capital of France " * 120 + "?"
    return [
        Example(id="short", question="Which city is number 1?", references=("Paris",)),
        Example(id="long", question=long_q, references=("Paris",)),
    ]


def test_prompt_over_the_context_window_is_skipped_before_any_compute(
    tiny_lm, tmp_path, monkeypatch
):
    seen = _spy_capture(monkeypatch)
    gs = GenerationSettings(max_new_tokens=4, batch_size=2)
    summary = extract_toy(tiny_lm, tmp_path, _long_examples(), gs)
    assert seen == ["short"]  # the long prompt never reached the model
    assert summary.total == 1 and summary.errors == 1
    (msg,) = summary.error_messages
    assert msg.startswith("long:") and "context window of 512 by" in msg
    assert "long" in summary.render() and "context window" in summary.render()


def test_long_prompt_refused_on_request_before_anything_is_written(tiny_lm, tmp_path, monkeypatch):
    from hallugraph.store import StoreError

    seen = _spy_capture(monkeypatch)
    gs = GenerationSettings(max_new_tokens=4)
    with pytest.raises(StoreError, match=r"long: prompt of \d+ tokens .* by \d+"):
        extract_toy(tiny_lm, tmp_path / "r", _long_examples(), gs, on_long_prompt="refuse")
    assert seen == [] and not (tmp_path / "r").exists()


def test_max_prompt_tokens_budget(tiny_lm, tmp_path, monkeypatch):
    seen = _spy_capture(monkeypatch)
    gs = GenerationSettings(max_new_tokens=4)
    summary = extract_toy(tiny_lm, tmp_path, _examples()[:2], gs, max_prompt_tokens=5)
    assert seen == [] and summary.errors == 2 and summary.total == 0
    assert "over --max-prompt-tokens 5 by" in summary.error_messages[0]
    assert json.loads((tmp_path / "run.json").read_text())["max_prompt_tokens"] == 5


def test_zero_samples_is_refused_and_writes_nothing(tiny_lm, tmp_path):
    from hallugraph.store import StoreError

    with pytest.raises(StoreError, match="at least 1"):
        run_extract(
            model="tiny",
            dataset="triviaqa",
            out=tmp_path / "r",
            lm=tiny_lm,
            progress=False,
            num_samples=0,
        )
    assert not (tmp_path / "r").exists()


# ------------------------------------------------- issue 16: parts for schedulers other than Ray

PART = """
import sys
sys.path[:0] = [{src!r}, {tests!r}]
from tiny_models import make_tiny_lm
from hallugraph.data import Example
from hallugraph.extract import GenerationSettings
from hallugraph.pipeline import run_extract

exs = [Example(id=f"q{{i}}", question=f"Which city is number {{i}}?", references=("Paris",))
       for i in range(7)]
s = run_extract(model="tiny", dataset="toy", out={out!r}, progress=False, examples=exs,
                shard_size=2, settings=GenerationSettings(max_new_tokens=4, batch_size=2),
                lm_factory=make_tiny_lm, num_parts=2, part={part})
print(s.render())
"""


def test_two_parts_in_two_processes_then_merge_make_the_single_process_run(tiny_lm, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from hallugraph.cli import main
    from hallugraph.features.verify import verify_run

    exs = [
        Example(id=f"q{i}", question=f"Which city is number {i}?", references=("Paris",))
        for i in range(7)
    ]
    gs = GenerationSettings(max_new_tokens=4, batch_size=2)
    extract_toy(tiny_lm, tmp_path / "single", exs, gs, shard_size=2)
    out = tmp_path / "parts"
    tests = Path(__file__).resolve().parent
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PART.format(src=str(tests.parent / "src"), tests=str(tests), out=str(out), part=i),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "hallugraph merge" in outputs[0] and not (out / "manifest.jsonl").exists()
    assert main(["merge", str(out)]) == 0
    a, b = TraceStore(tmp_path / "single"), TraceStore(out)
    assert a.rows == b.rows and len(b) == 7
    for x, y in zip(a, b, strict=True):
        for f in ("hidden_states", "attentions"):
            np.testing.assert_array_equal(x[f].view(np.uint16), y[f].view(np.uint16))
    assert verify_run(out).ok


def test_merge_says_which_units_are_missing(tiny_lm, tmp_path, capsys):
    from hallugraph.cli import main

    _extract(tiny_lm, tmp_path, shard_size=2, num_parts=2, part=1)
    assert main(["merge", str(tmp_path)]) == 1
    assert "units not done yet: 0, 2" in capsys.readouterr().out
    assert len(TraceStore(tmp_path)) == 2  # unit 1's traces are published all the same


_TRIM_SCRIPT = """
import json
from hallugraph.pipeline.worker import release_memory

def rss():
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:"))

blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MiB of heap blocks, under mmap's
pin = bytearray(64 * 1024)  # threshold; the top of the heap stays in use: free() cannot shrink it
del blocks
before = rss()
print(json.dumps({"trimmed": release_memory(), "freed_kB": before - rss()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_returns_a_units_freed_heap_to_the_system():
    """What a unit frees stays resident under glibc until trimmed; a long run's peak then crept
    up unit after unit (issue 16). ``release_memory`` (called after each unit) hands it back."""
    out = subprocess.run(
        [sys.executable, "-c", _TRIM_SCRIPT],
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path)),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    if not m["trimmed"]:
        pytest.skip("not glibc")
    assert m["freed_kB"] > 100 * 1024, m

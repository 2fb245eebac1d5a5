"""Checkpointed evaluation (issue 18): an interrupted ``evaluate`` resumed gives the files of an
uninterrupted one; a changed parameter or label recomputes exactly the cells it affects; a
damaged cell is recomputed with a warning naming it, never read."""

from __future__ import annotations

import json
import logging
import re
import shutil
import types
from pathlib import Path

import pytest

from hallugraph.detectors import all_detectors, get_detector
from hallugraph.evaluation import evaluate
from hallugraph.io import atomic_write_text
from hallugraph.store.integrity import row_digest
from hallugraph.store.layout import MANIFEST, read_manifest

OUTPUTS = ("results.json", "results.csv", "results.md", "transfer.csv", "lodo.csv")


class _Peak:
    extra_mb = 1.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.fixture
def fixed_cost(monkeypatch):
    """Cost columns made deterministic (every timed span 0.5 s, every fit 1 MB), so files of
    two evaluations can be compared byte for byte; no PNGs (they are tested elsewhere)."""
    import hallugraph.evaluation.cv as cv

    clock = iter(x * 0.5 for x in range(10**9))
    fake = types.SimpleNamespace(perf_counter=lambda: next(clock), process_time=lambda: 0.0)
    monkeypatch.setattr(cv, "time", fake)
    monkeypatch.setattr(cv, "PeakRSS", _Peak)
    for plot in ("plot_roc", "plot_length_bins", "plot_family_weights"):  # PNGs: not compared
        monkeypatch.setattr(f"hallugraph.evaluation.plots.{plot}", lambda rep, ds, path: path)


def _rewrite(run: Path, fn) -> None:
    rows = read_manifest(run)
    for i, r in enumerate(rows):
        fn(i, r)
        r["row_checksum"] = row_digest(r)
    atomic_write_text(run / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def two_runs(tiny_run, tmp_path):
    """Runs A and B of the tiny model; B shares 10 questions with A (transfer and leave-one-out
    leave them out)."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_run, a)
    shutil.copytree(tiny_run, b)

    def other(i, r):
        if i >= 10:
            r["question_id"], r["question"] = f"toy{50 + i:02d}", f"an unrelated question {i}?"

    _rewrite(b, other)
    for run, name in ((a, "A"), (b, "B")):
        info = json.loads((run / "run.json").read_text())
        info["dataset"] = name
        atomic_write_text(run / "run.json", json.dumps(info))
    return [a, b]


def _eval(runs, out, detectors=None, **kw):
    dets = detectors or [
        "perplexity",
        "llmcheck_attn_lr",
        get_detector("fusion", bases=("perplexity", "min_logprob")),
    ]
    kw = {"folds": 3, "repeats": 2, "bootstrap": 30, "progress": False, **kw}
    return evaluate(runs, dets, out_dir=out, **kw)


def _outputs(out: Path) -> dict[str, bytes]:
    names = [*OUTPUTS, *sorted(p.name for p in out.glob("scores_*.json"))]
    return {n: (out / n).read_bytes() for n in names}


def _cells(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out / "cells")): p.read_bytes()
        for p in sorted((out / "cells").rglob("*.json"))
    }


def _count(report, what: str) -> int:
    return int(re.search(rf"(\d+) {what}", report.cells).group(1))


def _break_fit(monkeypatch, name: str, at: int, exc: type[BaseException] = KeyboardInterrupt):
    """``name``'s fit raises ``exc`` on its ``at``-th call (counting from 1); returns the calls."""
    cls = all_detectors()[name]
    real, calls = cls.fit, []

    def fit(self, X, y):
        calls.append(len(X))
        if len(calls) == at:
            raise exc("killed")
        return real(self, X, y)

    monkeypatch.setattr(cls, "fit", fit)
    return calls


def test_interrupted_evaluation_resumes_to_the_same_files(
    two_runs, tmp_path, monkeypatch, fixed_cost
):
    whole = _eval(two_runs, tmp_path / "whole")
    n_cells = len(_cells(tmp_path / "whole"))
    # 2 runs x 3 detectors x 6 folds, + 2 transfer and 2 leave-one-out cells per detector
    assert n_cells == 2 * 3 * 6 + 3 * 4 and _count(whole, "computed") == n_cells
    out = tmp_path / "resumed"
    with monkeypatch.context() as m:  # killed during A's cross-validation
        _break_fit(m, "llmcheck_attn_lr", at=3)
        with pytest.raises(KeyboardInterrupt):
            _eval(two_runs, out)
    first = _cells(out)
    assert 0 < len(first) < n_cells and not (out / "results.json").exists()
    with monkeypatch.context() as m:  # killed again, later: in the leave-one-out cells
        _break_fit(m, "llmcheck_attn_lr", at=13)
        with pytest.raises(KeyboardInterrupt):
            _eval(two_runs, out)
    second = _cells(out)
    assert len(first) < len(second) < n_cells
    assert all(second[k] == v for k, v in first.items())  # read, not rewritten
    # the 13th fit reached leave-A-out: the 2 cells of the first try were read, not refitted
    assert (
        "transfer/llmcheck_attn_lr/B.json" in second
        and "lodo/llmcheck_attn_lr/A.json" not in second
    )
    calls = _break_fit(monkeypatch, "llmcheck_attn_lr", at=0)  # counts only
    again = _eval(two_runs, out)
    assert _count(again, "read") == len(second)
    assert _count(again, "computed") == n_cells - len(second)
    assert len(calls) == 2  # llmcheck_attn_lr: leave-A-out and leave-B-out only
    assert _outputs(out) == _outputs(tmp_path / "whole")
    assert _cells(out) == _cells(tmp_path / "whole")
    # and once more: everything read, nothing fitted, same files
    calls.clear()
    done = _eval(two_runs, out)
    assert _count(done, "read") == n_cells and _count(done, "computed") == 0 and not calls
    assert _outputs(out) == _outputs(tmp_path / "whole")


def test_a_changed_parameter_or_label_recomputes_the_cells_it_affects(
    two_runs, tmp_path, fixed_cost, caplog
):
    out = tmp_path / "e"
    _eval(two_runs, out, ["perplexity", "llmcheck_attn_lr"], repeats=1)
    before = _cells(out)
    # another C for llmcheck_attn_lr: its cells, and only its, are recomputed
    with caplog.at_level(logging.INFO, logger="hallugraph.evaluation.cells"):
        _eval(two_runs, out, ["perplexity", get_detector("llmcheck_attn_lr", C=0.5)], repeats=1)
    after = _cells(out)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {k for k in before if "llmcheck_attn_lr" in k}
    assert "detector changed" in caplog.text
    # one label of run A changes: A's cross-validation, what is trained on A (transfer from A,
    # leave-B-out) is recomputed; B's cross-validation, transfer from B and leave-A-out (they
    # read A's answers, not its labels) are not
    _rewrite(two_runs[0], lambda i, r: r.update(label=1 - r["label"]) if i == 4 else None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hallugraph.evaluation.cells"):
        resumed = _eval(
            two_runs, out, ["perplexity", get_detector("llmcheck_attn_lr", C=0.5)], repeats=1
        )
    last = _cells(out)
    changed = {k for k in last if last[k] != after[k]}
    expected = {k for k in last if k.startswith("cv/A/")}
    for d in ("perplexity", "llmcheck_attn_lr"):
        expected |= {f"transfer/{d}/A.json", f"lodo/{d}/B.json"}
    assert changed == expected
    assert "run changed" in caplog.text and "train changed" in caplog.text
    assert _count(resumed, "stale") == len(expected)
    # the same files as a fresh evaluation of the changed data
    fresh = tmp_path / "fresh"
    _eval(two_runs, fresh, ["perplexity", get_detector("llmcheck_attn_lr", C=0.5)], repeats=1)
    assert _outputs(out) == _outputs(fresh)


def test_a_damaged_cell_is_recomputed_with_a_warning_naming_it(
    tiny_run, tmp_path, fixed_cost, caplog
):
    out = tmp_path / "e"
    _eval([tiny_run], out, ["perplexity"])
    good_out, good_cells = _outputs(out), _cells(out)
    files = sorted((out / "cells").rglob("*.json"))
    assert len(files) == 6
    truncated, garbage, edited = files[0], files[1], files[2]
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage.write_bytes(b"\x00\xff not json")
    cell = json.loads(edited.read_text())
    cell["result"]["scores"][0] += 0.25  # a wrong number with a valid key
    edited.write_text(json.dumps(cell))
    with caplog.at_level(logging.WARNING, logger="hallugraph.evaluation.cells"):
        rep = _eval([tiny_run], out, ["perplexity"])
    for f in (truncated, garbage, edited):
        assert f"cell {f} is damaged" in caplog.text
    assert "checksum mismatch" in caplog.text
    assert _count(rep, "damaged") == 3 and _count(rep, "read") == 3
    assert _outputs(out) == good_out and _cells(out) == good_cells

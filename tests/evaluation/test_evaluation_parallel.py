"""``evaluate(..., processes=N)`` (issue 18): cells computed by spawned worker processes give the
files of a one-process evaluation; a worker that dies stops the evaluation with a clear error,
keeps the cells finished, and the same call resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_evaluation_cells import _cells, _count, _eval, _outputs, two_runs  # noqa: F401

from hallugraph.detectors import all_detectors
from hallugraph.evaluation.cells import digest, single_threaded
from hallugraph.evaluation.parallel import WorkerCrash
from hallugraph.io import atomic_write_text, jsonable

_COST = {"fit_s": 0.5, "predict_s": 0.5, "cpu_s": 0.0, "fit_peak_mb": 1.0}
_CRASH = "HALLUGRAPH_TEST_WORKER_CRASH"


def _fix_costs(out: Path) -> None:
    """Every CV cell's measured cost set to the same constants (checksum updated, the cell's
    own layout), so two evaluations' cells and outputs can be compared byte for byte."""
    for p in (out / "cells").rglob("*.json"):
        data = json.loads(p.read_text())
        if "fit_s" in data["result"]:
            data["result"].update(_COST)
            data["checksum"] = digest(data["result"])
            atomic_write_text(p, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")


class Crasher(all_detectors()["perplexity"]):
    """perplexity whose fit kills its process when the test's variable is set."""

    name = "crasher"

    def fit(self, X, y):  # noqa: ANN001, ANN201
        if os.environ.get(_CRASH):
            os._exit(3)
        return super().fit(X, y)


def test_worker_processes_give_the_files_of_one_process(two_runs, tmp_path):  # noqa: F811
    one = _eval(two_runs, tmp_path / "one")
    two = _eval(two_runs, tmp_path / "two", processes=2)
    n_cells = len(_cells(tmp_path / "one"))
    assert n_cells == len(_cells(tmp_path / "two")) == 2 * 3 * 6 + 3 * 4
    assert _count(one, "computed") == _count(two, "computed") == n_cells
    assert _count(two, "read") == 0
    for out in ("one", "two"):  # the measured seconds differ; nothing else may
        _fix_costs(tmp_path / out)
        again = _eval(two_runs, tmp_path / out)
        assert _count(again, "read") == n_cells
    assert _cells(tmp_path / "two") == _cells(tmp_path / "one")
    assert _outputs(tmp_path / "two") == _outputs(tmp_path / "one")


def test_a_dying_worker_stops_with_a_clear_error_and_the_evaluation_resumes(
    two_runs,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    dets, runs = ["perplexity", Crasher()], two_runs[:1]
    out = tmp_path / "e"
    monkeypatch.setenv(_CRASH, "1")  # the spawned workers inherit it
    with pytest.raises(WorkerCrash, match=r"worker process died .* run the same command again"):
        _eval(runs, out, dets, processes=2)
    kept = _cells(out)
    assert not (out / "results.json").exists()
    assert not any("crasher" in k for k in kept)
    monkeypatch.delenv(_CRASH)
    done = _eval(runs, out, dets, processes=2)
    n_cells = 2 * 6
    assert len(_cells(out)) == n_cells
    assert _count(done, "read") == len(kept) and _count(done, "computed") == n_cells - len(kept)
    assert all(_cells(out)[k] == v for k, v in kept.items())  # read, not rewritten
    rows = {(r["dataset"], r["detector"]): r for r in done.results}
    assert np.isfinite(rows[("A", "crasher")]["auroc"]) and not rows[("A", "crasher")]["error"]


def test_cells_are_computed_single_threaded():
    import torch

    before = torch.get_num_threads()
    with single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_processes_need_cells(two_runs, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="processes"):
        _eval(two_runs, tmp_path / "e", processes=2, cells=False)


_FRESH_WORKER = """
import sys
from hallugraph.detectors.base import DETECTORS
from hallugraph.evaluation import parallel
import hallugraph.detectors.fusion  # what unpickling a fusion spec imports
before = "graph_topology" in DETECTORS
parallel._init(parallel.Setup(tuple(sys.argv[1:]), (), 0, 3, 1, 10, sys.argv[1] + "/c", False))
print(before, all(n in DETECTORS for n in ("graph_topology", "hallushift", "lapeigvals")))
"""


def test_a_spawned_worker_knows_every_fusion_base(two_runs):  # noqa: F811
    """A spawned worker starts with only the detector modules its tasks' unpickling imports: a
    fusion base from another module (graph_topology, hallushift, lapeigvals) was unknown there
    and dropped from the fusion, silently, in evaluate(..., processes=2) on runs without
    tensors. The worker's start registers every built-in detector."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FRESH_WORKER, *map(str, two_runs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["False", "True"]

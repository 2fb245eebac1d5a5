"""The context-attention hypothesis test: statistics by hand, planted differences found with the
right sign, no difference not found, verdict rule, outputs and the ``hallugraph hypothesis``
command."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from hallugraph.cli import main
from hallugraph.evaluation.hypotheses import (
    adjust_pvalues,
    cliffs_delta,
    cohens_d,
    compare_layers,
    run_hypothesis,
    verdict,
)
from hallugraph.features import FeatureTable


def test_cliffs_delta_and_cohens_d_by_hand():
    h, c = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0])
    # pairs (h, c): (1,2)< (1,4)< (2,2)= (2,4)< (3,2)> (3,4)<  ->  (1 - 4) / 6
    assert cliffs_delta(h, c) == pytest.approx(-0.5)
    assert cliffs_delta(c, h) == pytest.approx(0.5)
    assert cliffs_delta(np.array([5.0, 6.0]), np.array([1.0])) == 1.0
    # means 2 and 3, variances 1 and 2, pooled sd sqrt((2*1 + 1*2) / 3)
    assert cohens_d(h, c) == pytest.approx(-1 / np.sqrt(4 / 3))
    assert cohens_d(np.ones(3), np.ones(4)) == 0.0
    assert np.isnan(cohens_d(np.ones(1), np.ones(4)))


def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    # Holm, m = 4 finite: sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.09, 0.09 (monotone), 0.5
    np.testing.assert_allclose(
        adjust_pvalues(p, "holm"), [0.04, 0.09, 0.09, np.nan, 0.5], equal_nan=True
    )
    # BH: 0.01*4/1, 0.03*4/2, 0.04*4/3, 0.5*4/4 -> 0.04, 0.06, 0.0533, 0.5 -> monotone from the top
    np.testing.assert_allclose(
        adjust_pvalues(p, "bh"), [0.04, 0.16 / 3, 0.16 / 3, np.nan, 0.5], equal_nan=True
    )
    assert adjust_pvalues([0.9, 0.8], "holm").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        adjust_pvalues(p, "bonferroni")


def _synthetic(n=60, shift=0.15, seed=0):
    """[2n, 3] shares: layer 0 lower on hallucinated traces by ``shift``, layer 1 the same
    distribution for both, layer 2 higher on hallucinated ones by ``shift``."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n)
    v = rng.uniform(0.2, 0.6, size=(2 * n, 3))
    v[:, 0] -= shift * y
    v[:, 2] += shift * y
    return v, y


def test_planted_difference_is_found_with_the_right_sign():
    v, y = _synthetic()
    rows = compare_layers(v, y)
    low, none, high = rows
    assert low["p"] < 1e-4 and low["p_adj"] < 1e-3 and low["significant"]
    assert low["cliffs_delta"] < -0.4 and low["cohens_d"] < -0.8
    assert low["mean_hallucinated"] < low["mean_correct"]
    assert none["p"] > 0.2 and not none["significant"] and abs(none["cliffs_delta"]) < 0.2
    assert high["significant"] and high["cliffs_delta"] > 0.4
    assert low["n_hallucinated"] == low["n_correct"] == 60
    assert low["ci_low_hallucinated"] < low["mean_hallucinated"] < low["ci_high_hallucinated"]
    # Holm multiplies the smallest p-value by the number of layers
    assert low["p_adj"] == pytest.approx(min(1.0, 3 * min(r["p"] for r in rows)))


def test_no_difference_gives_large_p_values():
    rng = np.random.default_rng(3)
    v = rng.uniform(0, 1, size=(80, 4))
    y = np.tile([0, 1], 40)
    rows = compare_layers(v, y)
    assert all(r["p"] > 0.05 and not r["significant"] for r in rows)
    assert verdict(rows) == ("refuted", "no significant layer of 4")
    # constant values: no difference at all, p = 1
    assert compare_layers(np.ones((6, 1)), np.array([0, 1] * 3))[0]["p"] == 1.0


def test_verdict_rule():
    v, y = _synthetic()
    assert verdict(compare_layers(v[:, :2], y))[0] == "confirmed"
    assert verdict(compare_layers(v, y))[0] == "mixed"
    word, reason = verdict(compare_layers(v[:, 1:], y))
    assert word == "refuted" and reason.startswith("opposite direction")
    word, _ = verdict(compare_layers(v[:61], y[:61]))  # a single hallucinated trace
    assert word == "untestable"


@pytest.fixture
def planted_run(tiny_run, tmp_path, monkeypatch):
    """A copy of the tiny run whose topology shows a planted lower context share on
    hallucinated traces at layer 1 (and none at layer 0)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    real = FeatureTable.stat

    def stat(self, name):
        arr = real(self, name).copy()
        if name == "graph_topology":
            y = self.labels
            rng = np.random.default_rng(0)
            arr[:, :, 0] = rng.uniform(0.3, 0.5, size=arr.shape[:2])
            arr[:, 1, 0] -= 0.3 * y
        return arr

    monkeypatch.setattr(FeatureTable, "stat", stat)
    return run


def test_run_hypothesis_writes_csv_json_and_plot(planted_run, tmp_path):
    out = tmp_path / "out"
    report = run_hypothesis([planted_run], out)
    v = report.verdicts["toy"]
    assert v["verdict"] == "confirmed" and v["significant_lower"] == [1]
    assert v["n_hallucinated"] == v["n_correct"] == 12
    with open(out / "hypothesis.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2  # measures x layers
    assert {r["measure"] for r in rows} == {"context", "prompt"}
    payload = json.loads((out / "hypothesis.json").read_text())
    assert payload["verdicts"]["toy"]["verdict"] == "confirmed" and "rule" in payload
    assert (out / "hypothesis_toy.png").read_bytes()[:4] == b"\x89PNG"
    table = report.to_markdown()
    assert table.count("| toy |") == 2 and "*" in table


def test_hypothesis_reads_the_cached_statistic(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    report = run_hypothesis([run, run])  # the same dataset twice: distinct names
    assert list(report.verdicts) == ["toy", "toy_2"]
    cached = sorted((run / "stats" / "graph_topology").iterdir())
    assert cached
    mtimes = [p.stat().st_mtime_ns for p in cached]
    run_hypothesis([run])
    assert [p.stat().st_mtime_ns for p in cached] == mtimes  # read back, not recomputed


def test_hypothesis_command(planted_run, tmp_path, capsys):
    out = tmp_path / "h"
    rc = main(["hypothesis", str(planted_run), "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| dataset | layer |" in printed and "toy: confirmed" in printed
    assert (out / "hypothesis.csv").exists() and (out / "hypothesis_toy.png").exists()


def test_hypothesis_command_errors(tiny_run, tmp_path, capsys):
    # unlabeled run
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest = run / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        r.pop("label")
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["hypothesis", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "no label" in capsys.readouterr().err
    # not a run
    assert main(["hypothesis", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a hallugraph run" in capsys.readouterr().err

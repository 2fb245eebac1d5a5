"""Evaluation protocol: grouped splits, metrics and CIs, validation threshold, end to end."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from hallugraph.detectors import Detector
from hallugraph.evaluation import EvalReport, PeakRSS, evaluate
from hallugraph.evaluation.bootstrap import metrics_with_ci, question_weights
from hallugraph.io import atomic_write_text
from hallugraph.metrics import average_precision, choose_threshold, roc_auc
from hallugraph.splits import split_groups
from hallugraph.store.layout import MANIFEST, read_manifest

# ---------------------------------------------------------------------------------- splits


def _grouped(n_groups=60, seed=1):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, size=n_groups)
    groups = np.repeat([f"q{i}" for i in range(n_groups)], sizes)
    labels = np.concatenate([rng.integers(0, 2, size=k) for k in sizes])
    return groups, labels


def test_split_disjoint_covering_grouped():
    groups, labels = _grouped()
    tr, va, te = split_groups(groups, seed=0, labels=labels)
    allidx = np.concatenate([tr, va, te])
    assert len(allidx) == len(groups)
    assert sorted(allidx.tolist()) == list(range(len(groups)))  # covers all, no overlap
    sets = [set(groups[i]) for i in (tr, va, te)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # sizes close to 60/20/20 of the traces
    n = len(groups)
    assert abs(len(tr) / n - 0.6) < 0.06
    assert abs(len(va) / n - 0.2) < 0.06
    assert abs(len(te) / n - 0.2) < 0.06


def test_split_deterministic_and_seed_dependent():
    groups, labels = _grouped()
    a = split_groups(groups, seed=3, labels=labels)
    b = split_groups(groups, seed=3, labels=labels)
    c = split_groups(groups, seed=4, labels=labels)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_split_stratified():
    # 100 singleton groups, 20 % hallucinated: every split gets about 20 %
    groups = np.array([f"q{i}" for i in range(100)])
    labels = (np.arange(100) % 5 == 0).astype(int)
    for seed in range(5):
        for idx in split_groups(groups, seed=seed, labels=labels):
            assert labels[idx].mean() == pytest.approx(0.2, abs=0.05)


def test_split_frac_and_errors():
    groups = np.arange(50)
    tr, va, te = split_groups(groups, seed=0, frac=(0.8, 0.0, 0.2))
    assert len(va) == 0 and len(tr) == 40 and len(te) == 10
    with pytest.raises(ValueError):
        split_groups(groups, frac=(0.5, -0.1, 0.6))


# ---------------------------------------------------------------------------------- metrics


def test_auroc_aupr_match_sklearn():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.2, 0.9, 0.7, 0.05])  # ties included
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    # a hand-computable case: one inversion among 2x2 pairs -> AUROC 3/4
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, size=40)
        s = np.round(rng.normal(size=40) + y, 1)
        if len(np.unique(y)) < 2:
            continue
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    # vectorized over rows
    Y = rng.integers(0, 2, size=(5, 30))
    S = rng.normal(size=(5, 30))
    np.testing.assert_allclose(
        roc_auc(Y, S), [roc_auc_score(a, b) for a, b in zip(Y, S, strict=True)]
    )
    np.testing.assert_allclose(
        average_precision(Y, S), [average_precision_score(a, b) for a, b in zip(Y, S, strict=True)]
    )


def test_single_class_metrics_not_applicable_with_note():
    # issue 15.11: with one class, AUPR/Acc/F1 only say which class the split holds (an
    # all-hallucinated split gave AUPR = F1 = 1.000 to any detector): all four are n/a
    assert math.isnan(roc_auc(np.ones(5), np.arange(5.0)))
    for y in (np.zeros(6), np.ones(6)):
        s = np.linspace(0, 1, 6)
        m, notes = metrics_with_ci(y, s[None], (s >= 0.5)[None], question_weights(y, 100))
        for metric in ("auroc", "aupr", "acc", "f1"):
            assert math.isnan(m[metric]), (y[0], metric, m[metric])
            assert math.isnan(m[f"{metric}_lo"]) and math.isnan(m[f"{metric}_hi"])
        assert notes and "one class" in notes[0] and "not applicable" in notes[0]


def _synthetic(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    return y, rng.normal(size=n) + 1.0 * y


def test_bootstrap_ci_contains_point_and_narrows():
    widths = {}
    for n in (60, 2000):
        y, s = _synthetic(n, seed=n)
        m, notes = metrics_with_ci(
            y, s[None], (s >= 0.5)[None], question_weights(np.arange(n), 500)
        )
        assert not notes
        for k in ("auroc", "aupr", "acc", "f1"):
            assert m[f"{k}_lo"] <= m[k] <= m[f"{k}_hi"], k
        widths[n] = {k: m[f"{k}_hi"] - m[f"{k}_lo"] for k in ("auroc", "aupr", "acc", "f1")}
    for k in widths[60]:
        assert widths[2000][k] < widths[60][k] / 2, k
    # fixed seed -> same CI
    y, s = _synthetic(60, seed=60)
    a, _ = metrics_with_ci(y, s[None], None, question_weights(np.arange(60), 200, seed=7))
    b, _ = metrics_with_ci(y, s[None], None, question_weights(np.arange(60), 200, seed=7))
    assert a == b
    assert question_weights(np.arange(10), 0).shape == (0, 10)


def test_bootstrap_skips_single_class_resamples():
    # one positive in 8: about a third of the resamples miss it and must be skipped, for
    # every metric; the CI is the 2.5/97.5 percentile of the rest
    y = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    s = np.array([0.1, 0.7, 0.3, 0.6, 0.2, 0.55, 0.4, 0.05])
    W = question_weights(np.arange(len(y)), 400, seed=3)
    m, _ = metrics_with_ci(y, s[None], (s >= 0.5)[None], W)
    W = W[W[:, y == 1].sum(1) > 0]
    assert 200 < len(W) < 350
    auc = [roc_auc_score(y, s, sample_weight=w) for w in W]
    acc = [np.average((s >= 0.5) == y, weights=w) for w in W]
    assert (m["auroc_lo"], m["auroc_hi"]) == pytest.approx(tuple(np.percentile(auc, [2.5, 97.5])))
    assert (m["acc_lo"], m["acc_hi"]) == pytest.approx(tuple(np.percentile(acc, [2.5, 97.5])))
    # a resample without the positive would have F1 = 0 (false alarms only)
    f1 = [f1_score(y, s >= 0.5, sample_weight=w) for w in W]
    assert (m["f1_lo"], m["f1_hi"]) == pytest.approx(tuple(np.percentile(f1, [2.5, 97.5])))
    assert m["f1_lo"] > 0


def test_threshold_from_validation_applied_to_test():
    # validation: negatives 0.1-0.3, positives 0.5-0.7 -> only a threshold in (0.3, 0.5]
    # separates them; the midpoint 0.4 is chosen
    y_val = np.array([0, 0, 0, 1, 1, 1])
    s_val = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.7])
    t, note = choose_threshold(y_val, s_val)
    assert t == pytest.approx(0.4) and note == ""
    # test: at 0.4 -> 0.35 ok, 0.45 FP, 0.47 FP, 0.42 TP, 0.9 TP: accuracy 3/5, F1 = 2/3
    # (a threshold of 0.5 would give 4/5: the threshold must come from validation)
    y_te = np.array([0, 0, 0, 1, 1])
    s_te = np.array([0.35, 0.45, 0.47, 0.42, 0.9])
    m, _ = metrics_with_ci(y_te, s_te[None], (s_te >= t)[None], np.zeros((0, 5)))
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert math.isnan(m["acc_lo"])  # no bootstrap -> no CI
    # one class in validation -> 0.5 with a note
    t1, note1 = choose_threshold(np.ones(4), np.arange(4.0))
    assert t1 == 0.5 and "one class" in note1


def test_threshold_maximizes_balanced_accuracy_not_accuracy():
    # 9 negatives at 0.1..0.9 and one positive at 0.85: accuracy is best flagging nothing
    # (0.9); balanced accuracy flags the positive (0.85 <= t, 0.9 wrongly too)
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.85])
    y = np.array([0] * 9 + [1])
    t, _ = choose_threshold(y, s)
    assert 0.8 < t <= 0.85


# ---------------------------------------------------------------------------------- end to end


class Boom(Detector):
    name = "boom"
    family = "test"
    supervised = True

    def fit(self, X, y):
        raise RuntimeError("kaboom")

    def predict_proba(self, X):
        raise AssertionError("never fitted")


def test_evaluate_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "eval"
    rep = evaluate(
        [tiny_run],
        ["perplexity", "min_logprob", Boom],
        out_dir=out,
        bootstrap=200,
        folds=4,
        repeats=2,
        progress=False,
    )
    assert isinstance(rep, EvalReport)
    ds = rep.config["datasets"][0]
    assert rep.runs[ds] == {"n": 24, "n_questions": 24, "pct_halluc": 50.0}
    assert rep.config["folds"] == 4 and rep.config["repeats"] == 2

    rows = {r["detector"]: r for r in rep.results}
    assert set(rows) == {"perplexity", "min_logprob", "boom"}
    for name in ("perplexity", "min_logprob"):
        r = rows[name]
        assert r["error"] == "" and r["family"] == "logits"
        assert 0 <= r["auroc"] <= 1 and 0 <= r["aupr"] <= 1 and 0 <= r["acc"] <= 1
        assert r["fit_s"] >= 0 and math.isfinite(r["threshold_median"])
        assert r["fit_peak_mb"] >= 0
        assert r["n"] == 24
        # every answer has one out-of-fold score per repeat
        assert rep.oof[ds][name].shape == (2, 24) and np.isfinite(rep.oof[ds][name]).all()
        # pooled AUROC = mean over the repeats of the AUROC of the out-of-fold scores
        y = rep.labels[ds]
        assert r["auroc"] == pytest.approx(np.mean([roc_auc(y, s) for s in rep.oof[ds][name]]))
    assert "kaboom" in rows["boom"]["error"] and math.isnan(rows["boom"]["auroc"])
    # paired comparison with the best single detector
    best = max(("perplexity", "min_logprob"), key=lambda n: rows[n]["auroc"])
    other = ({"perplexity", "min_logprob"} - {best}).pop()
    assert math.isnan(rows[best]["vs_best_diff"])
    assert rows[other]["vs_best_diff"] == pytest.approx(rows[other]["auroc"] - rows[best]["auroc"])
    assert 0 <= rows[other]["vs_best_p"] <= 1

    md = rep.to_markdown()
    assert "| perplexity | logits |" in md and "AUROC" in md and "kaboom" in md
    for f in ("results.md", "results.csv", "results.json", "transfer.csv", "lodo.csv"):
        assert (out / f).stat().st_size > 0, f
    for prefix in ("roc_", "length_"):
        pngs = list(out.glob(f"{prefix}*.png"))
        assert len(pngs) == 1 and pngs[0].stat().st_size > 1000
        assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "results.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["detector"] for r in csv_rows] == ["perplexity", "min_logprob", "boom"]
    assert float(csv_rows[0]["auroc"]) == pytest.approx(rows["perplexity"]["auroc"])
    data = json.loads((out / "results.json").read_text())
    assert data["results"][2]["auroc"] is None and data["config"]["bootstrap"] == 200
    cell = data["by_run"][ds]["detectors"]["perplexity"]
    assert cell["auroc"] == pytest.approx(rows["perplexity"]["auroc"])
    assert cell["auroc_ci"] == [rows["perplexity"]["auroc_lo"], rows["perplexity"]["auroc_hi"]]
    assert data["by_run"][ds]["best_single"] == best
    # deterministic: same seed, same numbers
    rep2 = evaluate(
        [tiny_run],
        ["perplexity"],
        out_dir=tmp_path / "e2",
        bootstrap=200,
        folds=4,
        repeats=2,
        progress=False,
    )
    assert rep2.row(ds, "perplexity")["auroc_lo"] == rows["perplexity"]["auroc_lo"]


def test_evaluate_default_out_dir(tiny_run, tmp_path):
    run = tmp_path / "runs" / "toy"
    shutil.copytree(tiny_run, run)
    rep = evaluate(str(run), ["mean_entropy"], bootstrap=0, transfer=False, progress=False)
    assert rep.out_dir == tmp_path / "runs" / "eval"
    assert (tmp_path / "runs" / "eval" / "results.csv").exists()


def test_unlabeled_run_names_label_command(tiny_run, tmp_path):
    run = tmp_path / "unlabeled"
    shutil.copytree(tiny_run, run)
    rows = read_manifest(run)
    for r in rows:
        r.pop("label", None)
    atomic_write_text(run / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="hallugraph label"):
        evaluate([run], ["perplexity"], out_dir=tmp_path / "e", progress=False)


def test_unknown_detector_name(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="unknown detector"):
        evaluate([tiny_run], ["no_such_detector"], out_dir=tmp_path / "e", progress=False)


def test_single_class_run_no_crash(tiny_run, tmp_path):
    run = tmp_path / "allhall"
    shutil.copytree(tiny_run, run)
    rows = read_manifest(run)
    for r in rows:
        r["label"] = 1
    atomic_write_text(run / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))
    rep = evaluate([run], ["perplexity"], out_dir=tmp_path / "e", bootstrap=50, progress=False)
    r = rep.results[0]
    assert r["error"] == ""
    assert "one class" in r["notes"]
    assert "validation split has one class" in r["notes"] and r["threshold_median"] == 0.5
    for metric in ("auroc", "aupr", "acc", "f1"):  # issue 15.11: not 1.000 but n/a
        assert math.isnan(r[metric])
    saved = json.loads((tmp_path / "e" / "results.json").read_text())["results"][0]
    assert all(saved[m] is None for m in ("auroc", "aupr", "acc", "f1"))
    table = (tmp_path / "e" / "results.md").read_text()
    line = next(ln for ln in table.splitlines() if "| perplexity |" in ln)
    assert line.count("n/a") >= 4 and "1.000" not in line
    # a run with one class: warned about (fewer than 10 answers of a class)
    assert any("fewer than 10" in w for w in rep.config["warnings"])
    assert "fewer than 10" in table


def test_peak_rss_sees_a_temporary_allocation():

    with PeakRSS(interval=0.001) as small:
        pass
    import mmap
    import time

    with PeakRSS(interval=0.001) as big:
        # 64 MB of fresh anonymous pages, touched (a malloc'd array could reuse pages the
        # process already holds after earlier tests, and then RSS would not grow)
        buf = mmap.mmap(-1, 64 * 2**20)
        buf.write(b"\x01" * (64 * 2**20))
        time.sleep(0.05)
        buf.close()
    assert big.extra_mb >= 50, big.extra_mb  # freed before exit: only the sampler saw it
    assert small.extra_mb < 20


def test_length_matched_auroc_ignores_what_length_explains():
    from hallugraph.evaluation.bootstrap import length_matched_auroc
    from hallugraph.metrics import roc_auc

    y = np.array([1, 1, 1, 0, 0, 0])
    lengths = np.array([10, 20, 21, 3, 10, 4])
    by_length = lengths.astype(float)  # a "detector" that reads only the length
    assert roc_auc(y, by_length) > 0.9
    out = length_matched_auroc(y, by_length[None], lengths, np.zeros((0, 6)), tol=2)
    assert out["n_pairs_lm"] == 1  # only the two 10-token answers are matched
    assert out["auroc_lm"] == 0.5  # a tie
    # a detector with a real signal keeps it on the matched pairs
    signal = y + 0.01 * lengths
    assert (
        length_matched_auroc(y, signal[None], lengths, np.zeros((0, 6)), tol=2)["auroc_lm"] == 1.0
    )
    # wider tolerance: pos 10 also meets neg 4 (not 3); pos 20 and 21 still meet nothing
    assert (
        length_matched_auroc(y, by_length[None], lengths, np.zeros((0, 6)), tol=6)["n_pairs_lm"]
        == 2
    )
    # no matched pair: undefined, not a number pretending to be one
    far = length_matched_auroc(
        y, by_length[None], np.array([50, 60, 70, 1, 2, 3]), np.zeros((0, 6)), tol=2
    )
    assert far["n_pairs_lm"] == 0 and np.isnan(far["auroc_lm"])
    # the bootstrap CI brackets the point estimate
    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 200)
    len2 = rng.integers(1, 30, 200)
    s2 = y2 + rng.normal(0, 1, 200)
    res = length_matched_auroc(y2, s2[None], len2, question_weights(np.arange(200), 200))
    assert res["auroc_lm_lo"] <= res["auroc_lm"] <= res["auroc_lm_hi"]
    assert 0.6 < res["auroc_lm"] < 0.9


# ---------------------------------------------------------------- issue 15: faults in evaluate


def test_outputs_are_atomic_and_results_json_is_written_last(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "e"
    evaluate([tiny_run], ["perplexity"], out_dir=out, bootstrap=20, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def killed(report, dataset, path):  # the process dies while the PNG is being written
        path.with_name(f".{path.name}.999.0.tmp").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr("hallugraph.evaluation.plots.plot_roc", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate([tiny_run], ["perplexity"], out_dir=out, seed=3, bootstrap=20, progress=False)
    # no 0-byte file; results.json (and the PNG) are still the complete previous ones
    files = [p for p in out.iterdir() if p.is_file() and not p.name.endswith(".tmp")]
    assert all(p.stat().st_size > 0 for p in files)
    assert (out / "results.json").read_bytes() == before["results.json"]
    png = next(n for n in before if n.endswith(".png"))
    assert (out / png).read_bytes() == before[png]


def test_report_names_detectors_that_failed_on_every_run(tiny_run, tmp_path):
    rep = evaluate(
        [tiny_run], ["perplexity", Boom], out_dir=tmp_path / "e", bootstrap=0, progress=False
    )
    assert rep.failed_everywhere() == ["boom"]
    assert (tmp_path / "e" / "results.json").exists()  # the table is still written


def test_unlabelable_traces_are_left_out(tiny_run, tmp_path):
    run = tmp_path / "partly"
    shutil.copytree(tiny_run, run)
    rows = read_manifest(run)
    for r in rows[:4]:
        r.pop("label")
        r["label_rule"], r["label_details"] = "match", {"unlabeled": "no usable reference"}
    atomic_write_text(run / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))
    rep = evaluate([run], ["perplexity"], out_dir=tmp_path / "e", bootstrap=0, progress=False)
    assert next(iter(rep.runs.values()))["n"] == 20
    assert any("4 of 24 traces could not be labeled" in w for w in rep.config["warnings"])


def test_a_damaged_shard_stops_evaluate_naming_it(tiny_run, tmp_path):
    from hallugraph.store.integrity import IntegrityError

    run = tmp_path / "damaged"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "stats", ignore_errors=True)
    shard = sorted((run / "shards").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-50])
    with pytest.raises(IntegrityError, match=shard.name):
        evaluate([run], ["saplma_lr"], out_dir=tmp_path / "e", bootstrap=0, progress=False)

"""The cross-validated protocol (issue 18): grouped repeated k-fold, what fit and the threshold
see, question-level bootstrap, paired comparison, transfer and leave-one-dataset-out without
shared questions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hallugraph.detectors import Detector
from hallugraph.evaluation import evaluate
from hallugraph.evaluation.bootstrap import metrics_with_ci, paired_comparison, question_weights
from hallugraph.io import atomic_write_text
from hallugraph.splits import grouped_kfold
from hallugraph.store.layout import MANIFEST


def _read_manifest(run):
    return [json.loads(line) for line in (run / MANIFEST).read_text().splitlines() if line]


def _qid_score(rows):
    return np.array([int(r["question_id"][3:]) / 100 for r in rows])


class Spy(Detector):
    """Records the question ids ``fit`` and ``predict_proba`` see; scores = id / 100."""

    name = "spy"
    family = "test"
    fits: list[set[str]] = []
    predicts: list[set[str]] = []

    def fit(self, X, y):
        Spy.fits.append({r["question_id"] for r in X.rows})
        return self

    def predict_proba(self, X):
        Spy.predicts.append({r["question_id"] for r in X.rows})
        return _qid_score(X.rows)


def test_grouped_kfold_covers_each_answer_once_per_repeat_by_question():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 4, 80)
    groups = np.repeat(np.arange(80), sizes)
    y = np.concatenate([np.full(k, rng.random() < 0.3) for k in sizes]).astype(int)
    folds = grouped_kfold(groups, y, n_folds=5, n_repeats=3, seed=0)
    assert len(folds) == 15
    for r in range(3):
        tests = [te for rr, _, _, te in folds if rr == r]
        assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(len(groups)))
        for rr, _, tr, te in folds:
            if rr == r:
                assert not set(groups[tr]) & set(groups[te])
                assert abs(y[te].mean() - y.mean()) < 0.12  # stratified
    # repeats differ, a seed repeats itself
    assert not np.array_equal(folds[0][3], folds[5][3])
    again = grouped_kfold(groups, y, n_folds=5, n_repeats=3, seed=0)
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(folds, again, strict=True))
    with pytest.raises(ValueError, match="too few"):
        grouped_kfold(np.arange(3), n_folds=5)


def test_fit_sees_only_training_rows_and_threshold_only_validation_rows(
    tiny_run, tmp_path, monkeypatch
):
    import hallugraph.evaluation.cv as cv

    seen_thresholds: list[np.ndarray] = []
    real = cv.choose_threshold

    def spy_threshold(y, s):
        seen_thresholds.append(np.asarray(s))
        return real(y, s)

    monkeypatch.setattr(cv, "choose_threshold", spy_threshold)
    Spy.fits.clear()
    Spy.predicts.clear()
    rep = evaluate(
        [tiny_run],
        [Spy],
        out_dir=tmp_path / "e",
        folds=4,
        repeats=2,
        bootstrap=0,
        transfer=False,
        progress=False,
    )
    rows = _read_manifest(tiny_run)
    all_ids = {r["question_id"] for r in rows}
    assert len(Spy.fits) == 8 and len(seen_thresholds) == 8
    tested: dict[str, int] = {}
    for k, fit_ids in enumerate(Spy.fits):
        val_ids, test_ids = Spy.predicts[2 * k], Spy.predicts[2 * k + 1]
        # the threshold is chosen on the validation rows' scores, nothing else
        thr_ids = {f"toy{round(v * 100):02d}" for v in seen_thresholds[k]}
        assert thr_ids == val_ids
        assert not fit_ids & val_ids and not fit_ids & test_ids and not val_ids & test_ids
        assert fit_ids | val_ids | test_ids == all_ids
        for q in test_ids:
            tested[q] = tested.get(q, 0) + 1
    assert tested == dict.fromkeys(all_ids, 2)  # every answer tested once per repeat
    ds = rep.config["datasets"][0]
    assert rep.oof[ds]["spy"].shape == (2, 24)


def test_question_bootstrap_is_not_fooled_by_repeated_answers():
    # each question has three identical answers: the evidence is that of one answer per
    # question, and the question bootstrap gives exactly the CI of the de-duplicated data
    rng = np.random.default_rng(0)
    y1 = rng.integers(0, 2, 60)
    s1 = y1 + rng.normal(0, 1.2, 60)
    y3, s3, g3 = np.repeat(y1, 3), np.repeat(s1, 3), np.repeat(np.arange(60), 3)
    one, _ = metrics_with_ci(y1, s1[None], None, question_weights(np.arange(60), 500, 1))
    three, _ = metrics_with_ci(y3, s3[None], None, question_weights(g3, 500, 1))
    assert three["auroc"] == pytest.approx(one["auroc"])
    assert (three["auroc_lo"], three["auroc_hi"]) == pytest.approx(
        (one["auroc_lo"], one["auroc_hi"])
    )
    # resampling answers instead (each its own "question") is ~sqrt(3) too narrow
    answers, _ = metrics_with_ci(y3, s3[None], None, question_weights(np.arange(180), 500, 1))
    w_q = three["auroc_hi"] - three["auroc_lo"]
    w_a = answers["auroc_hi"] - answers["auroc_lo"]
    assert w_q > 1.4 * w_a
    # all answers of a drawn question come together
    W = question_weights(g3, 50, 0)
    assert (W[:, 0::3] == W[:, 1::3]).all() and (W[:, 0::3] == W[:, 2::3]).all()


def test_paired_comparison():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    good = y + rng.normal(0, 0.7, 300)
    noise = rng.normal(0, 1, 300)
    W = question_weights(np.arange(300), 400, 0)
    same = paired_comparison(y, good[None], good[None], W)
    assert same["diff"] == 0 and same["p"] == 1.0
    cmp = paired_comparison(y, good[None], noise[None], W)
    assert cmp["diff"] > 0.2 and cmp["diff_lo"] > 0 and cmp["p"] < 0.01
    close = paired_comparison(y, good[None], (good + rng.normal(0, 0.05, 300))[None], W)
    assert close["diff_lo"] < 0 < close["diff_hi"] and close["p"] > 0.05


def _rewrite(run, fn):
    from hallugraph.store.integrity import row_digest

    rows = _read_manifest(run)
    for i, r in enumerate(rows):
        fn(i, r)
        if "row_checksum" in r:
            r["row_checksum"] = row_digest(r)
    atomic_write_text(run / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))


def test_transfer_and_lodo_never_test_a_shared_question(tiny_run, tmp_path, monkeypatch):
    # run B asks the questions of A for its first 10 traces (same id; or same text under
    # another id, as halueval_qa vs halueval_qa_tf), new questions for the other 14
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_run, a)
    shutil.copytree(tiny_run, b)

    def new_questions(i, r):
        if 5 <= i < 10:  # same question text, different id
            r["question_id"] = f"toy{50 + i:02d}"
        elif i >= 10:
            r["question_id"] = f"toy{50 + i:02d}"
            r["question"] = f"an unrelated question {i}?"

    _rewrite(b, new_questions)
    for run, name in ((a, "A"), (b, "B")):
        info = json.loads((run / "run.json").read_text())
        info["dataset"] = name
        atomic_write_text(run / "run.json", json.dumps(info))
    Spy.fits.clear()
    Spy.predicts.clear()
    rep = evaluate(
        [a, b],
        [Spy, "perplexity"],
        out_dir=tmp_path / "e",
        folds=3,
        repeats=1,
        bootstrap=50,
        progress=False,
    )
    a_ids = {f"toy{i:02d}" for i in range(24)}
    new_ids = {f"toy{50 + i:02d}" for i in range(10, 24)}
    ab = next(
        r
        for r in rep.transfer
        if (r["detector"], r["train_dataset"], r["test_dataset"]) == ("spy", "A", "B")
    )
    assert ab["n_test"] == 14 and ab["n_shared_left_out"] == 10
    # the transfer fit saw all of A; what it scored on B were the 14 new questions only
    assert a_ids in Spy.fits
    assert new_ids in Spy.predicts
    ba = next(r for r in rep.transfer if r["train_dataset"] == "B" and r["detector"] == "spy")
    # A's questions that B lacks, by id and by text: toy10 .. toy23
    assert ba["n_test"] == 14 and ba["n_shared_left_out"] == 10
    # leave-one-dataset-out: trained on B without the 10 questions it shares with A
    lodo = next(r for r in rep.lodo if r["test_dataset"] == "A" and r["detector"] == "spy")
    assert lodo["n_train"] == 14 and lodo["n_shared_left_out"] == 10 and lodo["n_test"] == 24
    assert new_ids in Spy.fits
    row = rep.row("A", "perplexity")
    assert row["lodo_auroc"] == next(
        r["auroc"] for r in rep.lodo if r["test_dataset"] == "A" and r["detector"] == "perplexity"
    )
    data = json.loads((tmp_path / "e" / "results.json").read_text())
    assert "lodo_auroc" in data["by_run"]["A"]["detectors"]["perplexity"]
    assert (tmp_path / "e" / "lodo.csv").exists()


def test_transfer_of_a_copy_has_nothing_to_test(tiny_run, tmp_path):
    # the old transfer test scored a copy of the training run: every question leaked
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    rep = evaluate(
        [tiny_run, other],
        ["perplexity"],
        out_dir=tmp_path / "e",
        folds=3,
        repeats=1,
        bootstrap=20,
        progress=False,
    )
    assert len(rep.transfer) == 2
    for r in rep.transfer:
        assert r["n_test"] == 0 and "nothing to test" in r["notes"] and np.isnan(r["auroc"])
    assert all(r["n_train"] == 0 for r in rep.lodo)


def test_fusion_is_compared_with_the_best_single_detector(tiny_run, tmp_path):
    from hallugraph.detectors import get_detector

    fusion = get_detector("fusion", bases=("perplexity", "min_logprob", "saplma_lr"))
    out = tmp_path / "e"
    rep = evaluate(
        [tiny_run],
        ["perplexity", "min_logprob", "saplma_lr", fusion],
        out_dir=out,
        folds=3,
        repeats=1,
        bootstrap=100,
        progress=False,
    )
    ds = rep.config["datasets"][0]
    best = max(("perplexity", "min_logprob", "saplma_lr"), key=lambda n: rep.row(ds, n)["auroc"])
    data = json.loads((out / "results.json").read_text())
    cmp = data["by_run"][ds]["fusion_vs_best"]
    assert cmp["best_single"] == best and data["by_run"][ds]["best_single"] == best
    assert cmp["diff"] == pytest.approx(rep.row(ds, "fusion")["auroc"] - rep.row(ds, best)["auroc"])
    assert cmp["diff_lo"] <= cmp["diff"] <= cmp["diff_hi"] and 0 <= cmp["p"] <= 1
    weights = data["by_run"][ds]["fusion_family_weights"]
    assert set(weights) <= {"logits", "hidden"} and sum(weights.values()) == pytest.approx(1)
    assert (out / f"fusion_weights_{ds}.png").stat().st_size > 1000
    assert "Fusion against the best single detector" in (out / "results.md").read_text()

"""Cross-validation of one detector on one run: repeated, grouped (by question), stratified
k-fold; inside each outer fold a grouped inner split of the training questions fits the
detector (inner train) and picks its threshold (inner validation); the outer fold's test
answers are only scored. Every answer gets one out-of-fold score per repeat.
See :mod:`hallugraph.evaluation`."""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.evaluation.bootstrap import MIN_CLASS_TEST, question_weights
from hallugraph.evaluation.cells import (
    CELL_FORMAT,
    CellError,
    CellStore,
    detector_identity,
    floats,
    number,
    rows_id,
    run_identity,
    seed_globals,
)
from hallugraph.evaluation.memory import PeakRSS
from hallugraph.evaluation.sources import code_digest, detector_modules
from hallugraph.features import FeatureTable
from hallugraph.features.logits import answer_content
from hallugraph.metrics import choose_threshold
from hallugraph.splits import grouped_kfold, split_groups

log = logging.getLogger(__name__)

INNER_VAL = 0.25
"""Share of an outer fold's training questions held out to pick the threshold."""


def question_keys(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Per trace, the question's id (``example_meta.group``, else ``question_id``) and its
    whitespace-collapsed, lower-cased text: two runs share a question when either matches."""
    out = []
    for r in rows:
        gid = str(r.get("example_meta", {}).get("group", r.get("question_id", "")))
        text = " ".join(str(r.get("question", "")).lower().split())
        out.append((gid, text))
    return out


def unseen(rows_b: Sequence[dict[str, Any]], rows_a: Sequence[dict[str, Any]]) -> np.ndarray:
    """Indices of ``rows_b`` whose question (id or text, :func:`question_keys`) is not among
    ``rows_a``'s questions."""
    keys_a = question_keys(rows_a)
    ids = {k[0] for k in keys_a}
    texts = {k[1] for k in keys_a if k[1]}
    keys_b = question_keys(rows_b)
    return np.array(
        [i for i, (g, t) in enumerate(keys_b) if g not in ids and t not in texts],
        dtype=np.int64,
    )


@dataclass
class Run:
    """One labeled run, its folds and its bootstrap weights."""

    name: str
    path: Path
    table: FeatureTable
    y: np.ndarray
    groups: np.ndarray
    folds: list[tuple[int, int, np.ndarray, np.ndarray]]
    W: np.ndarray
    """``[B, n]`` question-bootstrap weights (:func:`question_weights`)."""
    lengths: np.ndarray
    """Answer content tokens per trace (length-matched AUROC, length bins)."""
    labeled: np.ndarray
    """Indices of the traces of the run directory that are in ``table``."""
    n_repeats: int = 1
    inner: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    n_folds: int = 0
    identity: dict[str, str] = field(default_factory=dict)
    """:func:`~hallugraph.evaluation.cells.run_identity` (the cells' keys)."""
    fold_ids: dict[tuple[int, int], dict[str, str]] = field(default_factory=dict)
    """Per fold, the digests of its fit, validation and test rows (the cells' keys)."""


def dataset_names(tables: Sequence[FeatureTable], runs: Sequence[Path]) -> list[str]:
    base = [str(t.run_info[0].get("dataset") or p.name) for t, p in zip(tables, runs, strict=True)]
    names = []
    for b, p in zip(base, runs, strict=True):
        name = b if base.count(b) == 1 else f"{b} ({p.name})"
        k = 2
        while name in names:
            name, k = f"{b} ({p.name} {k})", k + 1
        names.append(name)
    return names


def load_runs(
    runs: Sequence[str | os.PathLike[str]],
    *,
    seed: int,
    n_folds: int,
    n_repeats: int,
    n_boot: int,
    warnings: list[str],
) -> list[Run]:
    """Load, fold and resample each run. Traces that ``hallugraph label`` found unlabelable
    (a ``label_rule`` but no ``label``: no reference answer) are left out, with a warning; a run
    with fewer than :data:`MIN_CLASS_TEST` answers of a class gets a warning."""
    paths = [Path(r) for r in runs]
    tables = [FeatureTable.from_run(p) for p in paths]
    out = []
    for p, t, name in zip(paths, tables, dataset_names(tables, paths), strict=True):
        if len(t) == 0:
            raise ValueError(f"run {p} has no traces")
        rows = t.rows
        missing = sum("label" not in r and "label_rule" not in r for r in rows)
        if missing:
            raise ValueError(
                f"run {p} is not labeled ({missing} of {len(t)} traces have no label): "
                f"run `hallugraph label {p}` first"
            )
        labeled = np.flatnonzero(["label" in r for r in rows])
        if len(labeled) < len(t):
            warnings.append(
                f"{name}: {len(t) - len(labeled)} of {len(t)} traces could not be labeled "
                "(no reference answer) and are left out"
            )
            if not len(labeled):
                raise ValueError(f"run {p}: no trace has a label (no reference answers)")
            t = t[labeled]
        y = t.labels
        groups = t.groups
        try:
            folds = grouped_kfold(groups, y, n_folds, n_repeats, seed)
        except ValueError as err:
            raise ValueError(f"run {p}: {err}") from None
        n_pos = int(y.sum())
        if min(n_pos, len(y) - n_pos) < MIN_CLASS_TEST:
            warnings.append(
                f"{name}: {n_pos} hallucinated and {len(y) - n_pos} correct answers (fewer than "
                f"{MIN_CLASS_TEST} of a class): its metrics are unreliable (see the CIs), or "
                "not applicable with one class"
            )
        run = Run(
            name=name,
            path=p,
            table=t,
            y=y,
            groups=groups,
            folds=folds,
            W=question_weights(groups, n_boot, seed),
            lengths=np.array([answer_content(r).stop for r in t.rows], dtype=np.int64),
            labeled=labeled,
            n_repeats=n_repeats,
            n_folds=n_folds,
            identity=run_identity(p, y, labeled),
        )
        qids = [{"question_id": r.get("question_id", "")} for r in rows]
        if len(labeled) < len(rows):
            qids = [qids[i] for i in labeled]
        for r, k, tr, te in folds:
            a, b, _ = split_groups(
                groups[tr],
                seed=seed * 1000 + 17 * r + k,
                frac=(1 - INNER_VAL, INNER_VAL, 0.0),
                labels=y[tr],
            )
            run.inner[(r, k)] = (tr[a], tr[b])
            run.fold_ids[(r, k)] = {
                part: rows_id(idx, [qids[i] for i in idx])
                for part, idx in (("fit", tr[a]), ("val", tr[b]), ("test", te))
            }
        out.append(run)
    return out


def instantiate(spec: Any, seed: int) -> Any:
    if isinstance(spec, type):
        det = spec()
        if hasattr(det, "seed"):
            det.seed = seed
        return det
    return copy.deepcopy(spec)


def scores(det: Any, X: FeatureTable) -> np.ndarray:
    s = np.asarray(det.predict_proba(X), dtype=np.float64)
    if s.ndim == 2 and s.shape[1:] == (2,):
        s = s[:, 1]
    s = s.reshape(-1) if s.ndim > 1 and s.size == len(X) else s
    if s.shape != (len(X),):
        raise ValueError(f"predict_proba returned shape {s.shape} for {len(X)} traces")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise ValueError(f"predict_proba returned {bad} non-finite scores")
    return s


@dataclass
class CVResult:
    S: np.ndarray
    """``[R, n]`` out-of-fold scores (one per repeat)."""
    P: np.ndarray
    """``[R, n]`` predictions at each fold's validation threshold."""
    thresholds: list[float]
    fit_s: float
    fit_peak_mb: float
    predict_s: float
    notes: list[str]
    family_weights: dict[str, float] | None = None


def cv_cells(
    run: Run, ident: dict[str, Any], seed: int, store: CellStore
) -> list[tuple[int, int, np.ndarray, Path | None, dict[str, Any]]]:
    """The cells of one detector's cross-validation on ``run``: ``(repeat, fold, test rows,
    cell path, key parts)`` per fold."""
    out = []
    for r, k, _tr, te in run.folds:
        parts = {
            "format": CELL_FORMAT,
            "code": code_digest(detector_modules(ident)),
            "kind": "cv",
            "detector": ident,
            "seed": seed,
            "folds": run.n_folds,
            "repeats": run.n_repeats,
            "repeat": r,
            "fold": k,
            "run": run.identity,
            "rows": run.fold_ids[(r, k)],
        }
        path = store.path("cv", run.name, ident["name"], f"r{r}_f{k}")
        out.append((r, k, te, path, parts))
    return out


@dataclass
class FoldResult:
    scores: np.ndarray
    threshold: float
    note: str
    fit_s: float
    fit_peak_mb: float
    predict_s: float
    family_weights: dict[str, float] | None


def _fold(run: Run, spec: Any, seed: int, r: int, k: int, te: np.ndarray) -> dict[str, Any]:
    """Fit on the fold's inner training rows, threshold on its validation rows, score its test
    rows: the cell's result (with its cost: wall seconds of the fit and of the scoring, the
    fit's peak memory, and ``cpu_s``, the process's CPU seconds for both, every thread)."""
    fit_idx, val_idx = run.inner[(r, k)]
    seed_globals(seed)
    det = instantiate(spec, seed)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        det.fit(run.table[fit_idx], run.y[fit_idx])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_val = scores(det, run.table[val_idx]) if len(val_idx) else np.zeros(0)
    s_te = scores(det, run.table[te])
    predict_s = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    threshold, note = choose_threshold(run.y[val_idx], s_val)
    fw = getattr(det, "family_weights_", None)
    return {
        "scores": s_te,
        "threshold": threshold,
        "note": note,
        "fit_s": fit_s,
        "fit_peak_mb": peak.extra_mb,
        "predict_s": predict_s,
        "cpu_s": cpu_s,
        "family_weights": {str(f): float(w) for f, w in fw.items()}
        if isinstance(fw, dict)
        else None,
    }


def _decode_fold(n: int) -> Any:
    def decode(res: dict[str, Any]) -> FoldResult:
        fw = res["family_weights"]
        if fw is not None and not isinstance(fw, dict):
            raise CellError("family_weights: a mapping expected")
        threshold = number(res["threshold"])
        if not np.isfinite(threshold):
            raise CellError("threshold: not finite")
        return FoldResult(
            scores=floats(res["scores"], n, "scores"),
            threshold=threshold,
            note=str(res["note"]),
            fit_s=number(res["fit_s"]),
            fit_peak_mb=number(res["fit_peak_mb"]),
            predict_s=number(res["predict_s"]),
            family_weights=None if fw is None else {str(f): number(w) for f, w in fw.items()},
        )

    return decode


def cross_validate(
    run: Run, spec: Any, seed: int, name: str = "", store: CellStore | None = None
) -> CVResult:
    """Out-of-fold scores of one detector on one run (raises what the detector raises), fold
    by fold through ``store``'s cells (read when computed before with the same key)."""
    store = store if store is not None else CellStore(None)
    name = name or str(getattr(spec, "name", type(spec).__name__))
    cells = cv_cells(run, detector_identity(name, instantiate(spec, seed)), seed, store)
    n = len(run.y)
    S = np.full((run.n_repeats, n), np.nan)
    P = np.zeros((run.n_repeats, n), dtype=bool)
    thresholds: list[float] = []
    fit_s, predict_s, peak_mb = [], 0.0, 0.0
    notes: set[str] = set()
    weights: list[dict[str, float]] = []
    try:
        for r, k, te, path, parts in cells:
            f = store.get(
                path,
                parts,
                functools.partial(_fold, run, spec, seed, r, k, te),
                _decode_fold(len(te)),
            )
            fit_s.append(f.fit_s)
            peak_mb = max(peak_mb, f.fit_peak_mb)
            predict_s += f.predict_s
            if f.note:
                notes.add(f.note)
            thresholds.append(f.threshold)
            S[r, te] = f.scores
            P[r, te] = f.scores >= f.threshold
            if f.family_weights is not None:
                weights.append(f.family_weights)
    except Exception:
        store.give_up(c[3] for c in cells)  # the detector is done on this run (its row says why)
        raise
    family_weights = None
    if weights:
        fams = sorted({f for w in weights for f in w})
        family_weights = {f: float(np.mean([w.get(f, 0.0) for w in weights])) for f in fams}
    return CVResult(
        S=S,
        P=P,
        thresholds=thresholds,
        fit_s=float(np.mean(fit_s)) if fit_s else float("nan"),
        fit_peak_mb=peak_mb,
        predict_s=predict_s,
        notes=sorted(notes),
        family_weights=family_weights,
    )

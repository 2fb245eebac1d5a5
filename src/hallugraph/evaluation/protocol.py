"""The evaluation protocol: fit every detector on the train split of each run, pick its threshold
on validation, measure on test (with bootstrap CIs), and score the other runs' test splits
(transfer). See :mod:`hallugraph.evaluation`."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hallugraph.detectors import NotApplicable, all_detectors
from hallugraph.evaluation.bootstrap import (
    METRICS,
    MIN_CLASS_TEST,
    bootstrap_indices,
    length_matched_auroc,
    metrics_with_ci,
    percent_positive,
)
from hallugraph.evaluation.memory import PeakRSS
from hallugraph.evaluation.report import EvalReport
from hallugraph.features import FeatureTable
from hallugraph.features.logits import answer_content
from hallugraph.metrics import choose_threshold
from hallugraph.splits import SPLITS, split_groups
from hallugraph.store.integrity import IntegrityError

log = logging.getLogger(__name__)


def _resolve(detectors: Sequence[Any] | None) -> list[tuple[str, Any]]:
    """``(name, spec)`` pairs; spec is a Detector class or an (unfitted) instance."""
    if detectors is None:
        reg = all_detectors()
        return [
            (n, reg[n]) for n in sorted(reg, key=lambda n: (str(getattr(reg[n], "family", "")), n))
        ]
    out: list[tuple[str, Any]] = []
    reg: dict[str, type] | None = None
    for d in detectors:
        if isinstance(d, str):
            reg = reg if reg is not None else all_detectors()
            if d not in reg:
                raise ValueError(f"unknown detector {d!r}; known: {', '.join(sorted(reg))}")
            out.append((d, reg[d]))
        else:
            out.append((str(getattr(d, "name", type(d).__name__)), d))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"detectors given twice: {', '.join(dup)}")
    return out


def _instantiate(spec: Any, seed: int) -> Any:
    if isinstance(spec, type):
        det = spec()
        if hasattr(det, "seed"):
            det.seed = seed
        return det
    return copy.deepcopy(spec)


def _scores(det: Any, X: FeatureTable) -> np.ndarray:
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


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    return msg if len(msg) <= 300 else msg[:297] + "..."


# --------------------------------------------------------------------------------------------
# report


@dataclass
class _Run:
    name: str
    path: Path
    table: FeatureTable
    y: np.ndarray
    idx: dict[str, np.ndarray]
    boot: np.ndarray
    lengths: np.ndarray
    """Answer content tokens per trace (for the length-matched AUROC)."""


def _dataset_names(tables: Sequence[FeatureTable], runs: Sequence[Path]) -> list[str]:
    base = [str(t.run_info[0].get("dataset") or p.name) for t, p in zip(tables, runs, strict=True)]
    names = []
    for b, p in zip(base, runs, strict=True):
        name = b if base.count(b) == 1 else f"{b} ({p.name})"
        k = 2
        while name in names:
            name, k = f"{b} ({p.name} {k})", k + 1
        names.append(name)
    return names


def _load_runs(
    runs: Sequence[str | os.PathLike[str]],
    seed: int,
    frac: tuple[float, float, float],
    boot: int,
    warnings: list[str] | None = None,
) -> list[_Run]:
    """Load and split each run. Traces that ``hallugraph label`` found unlabelable (a
    ``label_rule`` but no ``label``: no reference answer) are left out, with a warning; a test
    split with fewer than :data:`MIN_CLASS_TEST` answers of a class gets a warning."""
    warnings = warnings if warnings is not None else []
    paths = [Path(r) for r in runs]
    tables = [FeatureTable.from_run(p) for p in paths]
    out = []
    for p, t, name in zip(paths, tables, _dataset_names(tables, paths), strict=True):
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
        tr, va, te = split_groups(t.groups, seed=seed, frac=frac, labels=y)
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(
                f"run {p} has {len(np.unique(t.groups))} questions: too few for a train/test split"
            )
        n_pos = int(y[te].sum())
        n_neg = int(len(te) - n_pos)
        if min(n_pos, n_neg) < MIN_CLASS_TEST:
            warnings.append(
                f"{name}: the test split has {n_pos} hallucinated and {n_neg} correct answers "
                f"(fewer than {MIN_CLASS_TEST} of a class): its metrics are unreliable "
                "(see the CIs), or not applicable with one class"
            )
        out.append(
            _Run(
                name,
                p,
                t,
                y,
                {"train": tr, "val": va, "test": te},
                bootstrap_indices(len(te), boot, seed),
                np.array([answer_content(r).stop for r in t.rows], dtype=np.int64),
            )
        )
    return out


def _precompute_stats(run: _Run, specs: Sequence[tuple[str, Any]], progress: bool) -> None:
    """Compute every statistic the detectors name in one pass over the run (cached on disk),
    so fit times do not include it. Failures are left for the detectors to report."""
    from hallugraph.features import compute_stats

    names = sorted({s for _, spec in specs for s in getattr(spec, "stats", ()) or ()})
    if not names:
        return
    try:
        compute_stats(run.table.stores[0], names, progress=progress)
    except IntegrityError:
        raise  # a damaged file: no number may come out of this run
    except Exception as err:  # noqa: BLE001 - one statistic may be impossible (no tensors kept)
        log.info("statistics of %s in one pass failed (%s); detectors will report", run.path, err)


def evaluate(
    runs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    detectors: Sequence[Any] | None = None,
    *,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    bootstrap: int = 1000,
    transfer: bool = True,
    progress: bool = True,
    frac: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> EvalReport:
    """Benchmark ``detectors`` (names, Detector classes or unfitted instances; default: every
    registered detector) on labeled ``runs`` (one per dataset); see the module docstring for the
    protocol. Writes the table, CSV/JSON and ROC plots into ``out_dir`` (default
    ``RUN/../eval`` of the first run) and returns the :class:`EvalReport`.

    Raises ``ValueError`` for an unlabeled run (naming ``hallugraph label RUN``), an unknown
    detector name or a run too small to split.
    """
    if isinstance(runs, str | os.PathLike):
        runs = [runs]
    if not runs:
        raise ValueError("no runs to evaluate")
    specs = _resolve(detectors)
    warnings: list[str] = []
    loaded = _load_runs(runs, seed, frac, bootstrap, warnings)
    for w in warnings:
        log.warning("%s", w)
    splits = {
        r.name: {
            k: {"n": int(len(r.idx[k])), "pct_halluc": percent_positive(r.y[r.idx[k]])}
            for k in SPLITS
        }
        for r in loaded
    }
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    transfer_rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {r.name: {} for r in loaded}
    do_transfer = transfer and len(loaded) > 0

    bar = tqdm(total=len(loaded) * len(specs), desc="evaluate", disable=not progress)
    try:
        for run in loaded:
            _precompute_stats(run, specs, progress)
            for name, spec in specs:
                bar.set_postfix_str(f"{run.name} / {name}")
                row, tr_rows = _evaluate_one(
                    run, name, spec, loaded if do_transfer else [], seed, bootstrap, curves
                )
                if row.get("skipped"):
                    skipped.append(
                        {"dataset": run.name, "detector": name, "reason": row["skipped"]}
                    )
                else:
                    results.append(row)
                transfer_rows.extend(tr_rows)
                bar.update(1)
    finally:
        bar.close()

    # transfer rows grouped by detector, then train, then test dataset (in run order)
    order = {r.name: i for i, r in enumerate(loaded)}
    det_order = {n: i for i, (n, _) in enumerate(specs)}
    transfer_rows.sort(
        key=lambda r: (
            det_order[r["detector"]],
            order[r["train_dataset"]],
            order[r["test_dataset"]],
        )
    )
    report = EvalReport(
        results=results,
        transfer=transfer_rows,
        splits=splits,
        config={
            "runs": [str(r.path) for r in loaded],
            "datasets": [r.name for r in loaded],
            "detectors": [n for n, _ in specs],
            "seed": seed,
            "bootstrap": bootstrap,
            "frac": list(frac),
            "threshold_rule": "max balanced accuracy on the validation split",
            "ci": "95% percentile bootstrap over test items",
            "skipped": skipped,
            "warnings": warnings,
        },
        curves=curves,
    )
    out = Path(out_dir) if out_dir is not None else Path(loaded[0].path).parent / "eval"
    report.save(out)
    return report


def _evaluate_one(
    run: _Run,
    name: str,
    spec: Any,
    others: Sequence[_Run],
    seed: int,
    n_boot: int,
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit one detector on one run's train split, score val/test (and the other runs' test
    splits for transfer); never raises."""
    tr, va, te = (run.idx[k] for k in SPLITS)
    y_te = run.y[te]
    row: dict[str, Any] = {
        "dataset": run.name,
        "detector": name,
        "family": str(getattr(spec, "family", "") or ""),
        "supervised": bool(getattr(spec, "supervised", True)),
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
        "n_test": int(len(te)),
        "pct_halluc_test": percent_positive(y_te),
        **{f"{m}{x}": float("nan") for m in METRICS for x in ("", "_lo", "_hi")},
        **{f"auroc_lm{x}": float("nan") for x in ("", "_lo", "_hi")},
        "n_pairs_lm": 0,
        "threshold": float("nan"),
        "fit_s": float("nan"),
        "fit_peak_mb": float("nan"),
        "predict_s": float("nan"),
        "error": "",
        "notes": "",
        "run": str(run.path),
    }
    notes: list[str] = []
    det = None
    try:
        det = _instantiate(spec, seed)
        t0 = time.perf_counter()
        with PeakRSS() as peak:
            det.fit(run.table[tr], run.y[tr])
        row["fit_s"] = time.perf_counter() - t0
        row["fit_peak_mb"] = peak.extra_mb
        t0 = time.perf_counter()
        s_va = _scores(det, run.table[va]) if len(va) else np.zeros(0)
        s_te = _scores(det, run.table[te])
        row["predict_s"] = time.perf_counter() - t0
        threshold, note = choose_threshold(run.y[va], s_va)
        if note:
            notes.append(note)
        row["threshold"] = threshold
        metrics, mnotes = metrics_with_ci(y_te, s_te, threshold, idx=run.boot, n_boot=n_boot)
        row.update(metrics)
        row.update(length_matched_auroc(y_te, s_te, run.lengths[te], idx=run.boot))
        notes += mnotes
        curves[run.name][name] = (y_te, s_te)
    except NotApplicable as err:  # e.g. no attribution scores for this run: skip, no row
        log.info("detector %s skipped on %s: %s", name, run.name, err)
        return {**row, "skipped": str(err)}, []
    except IntegrityError:
        raise  # a damaged file stops the evaluation (exit 2 naming it), not one detector
    except Exception as err:  # noqa: BLE001 - one detector must not stop the evaluation
        log.warning("detector %s on %s failed: %s", name, run.name, err, exc_info=True)
        row["error"] = _err(err)
        det = None
    row["notes"] = "; ".join(notes)

    tr_rows = []
    for other in others:
        t_row: dict[str, Any] = {
            "detector": name,
            "train_dataset": run.name,
            "test_dataset": other.name,
            "n_test": int(len(other.idx["test"])),
            "pct_halluc_test": percent_positive(other.y[other.idx["test"]]),
            **{f"{m}{x}": float("nan") for m in ("auroc", "acc") for x in ("", "_lo", "_hi")},
            "threshold": row["threshold"],
            "error": "",
            "notes": "",
        }
        if other is run:
            if row["error"]:
                t_row["error"] = row["error"]
            for m in ("auroc", "acc"):
                for x in ("", "_lo", "_hi"):
                    t_row[f"{m}{x}"] = row[f"{m}{x}"]
            t_row["notes"] = row["notes"]
        elif det is None:
            t_row["error"] = f"not fitted on {run.name}: {row['error']}"
        else:
            try:
                te_o = other.idx["test"]
                s_o = _scores(det, other.table[te_o])
                metrics, mnotes = metrics_with_ci(
                    other.y[te_o], s_o, row["threshold"], idx=other.boot, n_boot=n_boot
                )
                for m in ("auroc", "acc"):
                    for x in ("", "_lo", "_hi"):
                        t_row[f"{m}{x}"] = metrics[f"{m}{x}"]
                t_row["notes"] = "; ".join(mnotes)
            except NotApplicable:  # the other run lacks what the detector reads: no cell
                continue
            except IntegrityError:
                raise
            except Exception as err:  # noqa: BLE001
                log.warning("transfer of %s %s -> %s failed: %s", name, run.name, other.name, err)
                t_row["error"] = _err(err)
        tr_rows.append(t_row)
    return row, tr_rows

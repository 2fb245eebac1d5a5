"""The evaluation protocol: cross-validate every detector on each run (pooled out-of-fold scores,
question-bootstrap CIs), compare each detector with the run's best one (paired), then transfer
and leave-one-dataset-out across runs. See :mod:`hallugraph.evaluation`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hallugraph.detectors import NotApplicable, all_detectors
from hallugraph.evaluation.bootstrap import (
    METRICS,
    length_matched_auroc,
    metrics_with_ci,
    paired_comparison,
    percent_positive,
)
from hallugraph.evaluation.cells import CELL_DIR, CellStore, detector_identity
from hallugraph.evaluation.cv import Run, cross_validate, cv_cells, instantiate, load_runs
from hallugraph.evaluation.parallel import Setup, compute_cells, tasks_of
from hallugraph.evaluation.report import FUSION, EvalReport, best_single
from hallugraph.evaluation.transfer import (
    Unseen,
    _err,
    lodo_cell,
    lodo_rows,
    transfer_cell,
    transfer_rows,
)
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


def _precompute_stats(run: Run, specs: Sequence[tuple[str, Any]], progress: bool) -> None:
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


def _empty_row(run: Run, name: str, spec: Any) -> dict[str, Any]:
    return {
        "dataset": run.name,
        "detector": name,
        "family": str(getattr(spec, "family", "") or ""),
        "supervised": bool(getattr(spec, "supervised", True)),
        "n": int(len(run.y)),
        "n_questions": int(len(np.unique(run.groups))),
        "pct_halluc": percent_positive(run.y),
        **{f"{m}{x}": float("nan") for m in METRICS for x in ("", "_lo", "_hi")},
        **{f"auroc_lm{x}": float("nan") for x in ("", "_lo", "_hi")},
        "n_pairs_lm": 0,
        **{f"vs_best_{x}": float("nan") for x in ("diff", "lo", "hi", "p")},
        **{f"lodo_{m}{x}": float("nan") for m in ("auroc", "aupr") for x in ("", "_lo", "_hi")},
        "threshold_median": float("nan"),
        "fit_s": float("nan"),
        "fit_peak_mb": float("nan"),
        "predict_s": float("nan"),
        "error": "",
        "notes": "",
        "run": str(run.path),
    }


def _evaluate_one(
    run: Run,
    name: str,
    spec: Any,
    seed: int,
    oof: dict[str, dict[str, np.ndarray]],
    store: CellStore | None = None,
) -> tuple[dict[str, Any], dict[str, float] | None]:
    """Cross-validate one detector on one run: its result row (never raises but for a
    damaged file) and its family weights (a fused detector's)."""
    row = _empty_row(run, name, spec)
    try:
        cv = cross_validate(run, spec, seed, name, store)
    except NotApplicable as err:  # e.g. no attribution scores for this run: skip, no row
        log.info("detector %s skipped on %s: %s", name, run.name, err)
        return {**row, "skipped": str(err)}, None
    except IntegrityError:
        raise  # a damaged file stops the evaluation (exit 2 naming it), not one detector
    except Exception as err:  # noqa: BLE001 - one detector must not stop the evaluation
        log.warning("detector %s on %s failed: %s", name, run.name, err, exc_info=True)
        row["error"] = _err(err)
        return row, None
    metrics, notes = metrics_with_ci(run.y, cv.S, cv.P, run.W)
    row.update(metrics)
    row.update(length_matched_auroc(run.y, cv.S, run.lengths, run.W))
    row["threshold_median"] = float(np.median(cv.thresholds))
    row["fit_s"], row["fit_peak_mb"], row["predict_s"] = cv.fit_s, cv.fit_peak_mb, cv.predict_s
    row["notes"] = "; ".join(cv.notes + notes)
    oof[run.name][name] = cv.S
    return row, cv.family_weights


def _paired(
    run: Run, rows: list[dict[str, Any]], oof: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any] | None:
    """Each detector against the run's best single detector (paired question bootstrap);
    returns the fusion's comparison, if there is a fusion row."""
    best = best_single(rows, run.name)
    if best is None:
        return None
    fusion = None
    for r in rows:
        if r["dataset"] != run.name or r["detector"] not in oof[run.name]:
            continue
        if r["detector"] == best:
            continue
        cmp = paired_comparison(run.y, oof[run.name][r["detector"]], oof[run.name][best], run.W)
        r["vs_best_diff"], r["vs_best_lo"], r["vs_best_hi"] = (
            cmp["diff"],
            cmp["diff_lo"],
            cmp["diff_hi"],
        )
        r["vs_best_p"] = cmp["p"]
        if r["detector"] == FUSION:
            fusion = {"detector": FUSION, "best_single": best, **cmp}
    return fusion


def _plan(
    loaded: Sequence[Run],
    specs: Sequence[tuple[str, Any]],
    seed: int,
    store: CellStore,
    unseen_idx: Unseen | None,
    transfer: bool,
    lodo: bool,
) -> tuple[int, set[str], list[tuple[tuple[Any, ...], Any, dict[str, Any]]]]:
    """Count every cell of the evaluation and note those already computed with the same key
    (:meth:`CellStore.peek`); returns the count, the runs whose CV cells are all ready and the
    missing cells (:class:`~hallugraph.evaluation.parallel.Task`'s ``what``, path, key parts)."""
    total, complete, missing = 0, set(), []
    idents = {name: detector_identity(name, instantiate(spec, seed)) for name, spec in specs}
    for ri, run in enumerate(loaded):
        ready = True
        for di, (name, _) in enumerate(specs):
            for r, k, _te, path, parts in cv_cells(run, idents[name], seed, store):
                total += 1
                if not store.peek(path, parts):
                    ready = False
                    missing.append((("cv", ri, di, r, k), path, parts))
        if ready:
            complete.add(run.name)
    if unseen_idx is not None:
        for di, (name, _) in enumerate(specs):
            for i in range(len(loaded)):
                for on, kind, cell in (
                    (transfer, "transfer", transfer_cell),
                    (lodo, "lodo", lodo_cell),
                ):
                    if on:
                        total += 1
                        path, parts = cell(loaded, i, idents[name], seed, unseen_idx, store)
                        if not store.peek(path, parts):
                            missing.append(((kind, di, i), path, parts))
    return total, complete, missing


def evaluate(
    runs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    detectors: Sequence[Any] | None = None,
    *,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    bootstrap: int = 1000,
    folds: int = 5,
    repeats: int = 3,
    transfer: bool = True,
    lodo: bool = True,
    progress: bool = True,
    cells: bool = True,
    processes: int = 1,
) -> EvalReport:
    """Benchmark ``detectors`` (names, Detector classes or unfitted instances; default: every
    registered detector) on labeled ``runs`` (one per dataset) with ``repeats`` x ``folds``
    grouped cross-validation; see the module docstring for the protocol. Writes the table,
    CSV/JSON and plots into ``out_dir`` (default ``RUN/../eval`` of the first run) and returns
    the :class:`EvalReport`.

    With ``cells`` (the default) every unit of work is checkpointed under ``out_dir/cells``
    (:mod:`hallugraph.evaluation.cells`): the same call after an interruption reads what was
    done and computes the rest, and writes the same files as an uninterrupted evaluation.

    Raises ``ValueError`` for an unlabeled run (naming ``hallugraph label RUN``), an unknown
    detector name or a run with fewer questions than folds.
    """
    if isinstance(runs, str | os.PathLike):
        runs = [runs]
    if not runs:
        raise ValueError("no runs to evaluate")
    if processes < 1 or (processes > 1 and not cells):
        raise ValueError(f"processes={processes}: 1, or more with cells (the workers write them)")
    specs = _resolve(detectors)
    warnings: list[str] = []
    loaded = load_runs(
        runs, seed=seed, n_folds=folds, n_repeats=repeats, n_boot=bootstrap, warnings=warnings
    )
    for w in warnings:
        log.warning("%s", w)
    summary = {
        r.name: {
            "n": int(len(r.y)),
            "n_questions": int(len(np.unique(r.groups))),
            "pct_halluc": percent_positive(r.y),
        }
        for r in loaded
    }
    out = Path(out_dir) if out_dir is not None else Path(loaded[0].path).parent / "eval"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    store = CellStore(out / CELL_DIR if cells else None)
    several = len(loaded) > 1 and (transfer or lodo)
    unseen_idx = Unseen(loaded) if several else None
    total, complete, missing = _plan(loaded, specs, seed, store, unseen_idx, transfer, lodo)
    if store.ready:
        log.warning("%d of %d cells already computed in %s", len(store.ready), total, store.root)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    oof: dict[str, dict[str, np.ndarray]] = {r.name: {} for r in loaded}
    family_weights: dict[str, dict[str, float]] = {}
    paired: dict[str, Any] = {}
    bar = tqdm(total=total, initial=len(store.ready), desc="evaluation cells", disable=not progress)
    store.bar = bar
    try:
        for run in loaded:
            if run.name not in complete:
                _precompute_stats(run, specs, progress)
        if processes > 1 and store.root is not None:
            setup = Setup(
                tuple(str(r) for r in runs), tuple(specs), seed, folds, repeats, bootstrap,
                str(store.root), unseen_idx is not None,
            )  # fmt: skip
            compute_cells(setup, tasks_of(missing), processes, store, bar)
        for run in loaded:
            for name, spec in specs:
                bar.set_postfix_str(f"cv {run.name} / {name}")
                row, fw = _evaluate_one(run, name, spec, seed, oof, store)
                if row.get("skipped"):
                    skipped.append(
                        {"dataset": run.name, "detector": name, "reason": row["skipped"]}
                    )
                else:
                    results.append(row)
                if fw is not None and name == FUSION:
                    family_weights[run.name] = fw
            fused = _paired(run, results, oof)
            if fused is not None:
                paired[run.name] = fused
        transfer_out: list[dict[str, Any]] = []
        lodo_out: list[dict[str, Any]] = []
        for name, spec in specs if unseen_idx is not None else ():
            if transfer:
                bar.set_postfix_str(f"transfer / {name}")
                transfer_out += transfer_rows(
                    loaded, name, spec, seed, bootstrap, unseen_idx, store
                )
            if lodo:
                bar.set_postfix_str(f"leave-one-out / {name}")
                lodo_out += lodo_rows(loaded, name, spec, seed, unseen_idx, store)
    finally:
        bar.close()
    log.info("%s", store.summary())
    for cell in lodo_out:
        for r in results:
            if r["dataset"] == cell["test_dataset"] and r["detector"] == cell["detector"]:
                for m in ("auroc", "aupr"):
                    for x in ("", "_lo", "_hi"):
                        r[f"lodo_{m}{x}"] = cell[f"{m}{x}"]
    report = EvalReport(
        results=results,
        transfer=transfer_out,
        lodo=lodo_out,
        paired=paired,
        runs=summary,
        family_weights=family_weights,
        config={
            "runs": [str(r.path) for r in loaded],
            "datasets": [r.name for r in loaded],
            "detectors": [n for n, _ in specs],
            "seed": seed,
            "bootstrap": bootstrap,
            "folds": folds,
            "repeats": repeats,
            "protocol": (
                f"{repeats} x {folds}-fold cross-validation grouped by question and stratified "
                "by label; in each fold the detector is fitted on 75% of the training "
                "questions and its threshold set on the other 25% (max balanced accuracy); "
                "metrics of the pooled out-of-fold scores, averaged over the repeats"
            ),
            "ci": "95% percentile bootstrap over questions (all answers of a question together)",
            "paired": "detector minus the run's best single detector, AUROC; paired question "
            "bootstrap, two-sided p",
            "transfer": "fit on all of run A; test on the questions of B that A does not hold",
            "lodo": "fit on all other runs together (minus questions shared with the left-out "
            "run); test on the whole left-out run",
            "skipped": skipped,
            "warnings": warnings,
        },
        oof={k: dict(v) for k, v in oof.items()},
        labels={r.name: r.y for r in loaded},
        lengths={r.name: r.lengths for r in loaded},
        index={r.name: r.labeled for r in loaded},
    )
    report.cells = store.summary()
    report.save(out)
    return report

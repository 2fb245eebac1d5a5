"""The evaluation's outputs: :class:`EvalReport` and its files (the table ``results.md``, CSV and
JSON files, the transfer and leave-one-dataset-out cells, the per-run plots)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.evaluation.bootstrap import METRICS
from hallugraph.io import atomic_write_text, jsonable

FUSION = "fusion"


def best_single(rows: Sequence[Mapping[str, Any]], dataset: str) -> str | None:
    """The detector (not :data:`FUSION`) with the highest pooled AUROC on ``dataset``."""
    cands = [
        r
        for r in rows
        if r["dataset"] == dataset
        and r["detector"] != FUSION
        and not math.isnan(float(r.get("auroc", float("nan"))))
    ]
    return str(max(cands, key=lambda r: r["auroc"])["detector"]) if cands else None


RESULT_COLUMNS = [
    "dataset",
    "detector",
    "family",
    "supervised",
    "n",
    "n_questions",
    "pct_halluc",
    *[f"{m}{x}" for m in METRICS for x in ("", "_lo", "_hi")],
    "auroc_lm",
    "auroc_lm_lo",
    "auroc_lm_hi",
    "n_pairs_lm",
    "vs_best_diff",
    "vs_best_lo",
    "vs_best_hi",
    "vs_best_p",
    *[f"lodo_{m}{x}" for m in ("auroc", "aupr") for x in ("", "_lo", "_hi")],
    "threshold_median",
    "fit_s",
    "fit_peak_mb",
    "predict_s",
    "error",
    "notes",
    "run",
]
TRANSFER_COLUMNS = [
    "detector",
    "train_dataset",
    "test_dataset",
    "n_test",
    "n_shared_left_out",
    "pct_halluc_test",
    *[f"{m}{x}" for m in ("auroc", "aupr") for x in ("", "_lo", "_hi")],
    "error",
    "notes",
]
LODO_COLUMNS = [
    "detector",
    "test_dataset",
    "train_datasets",
    "n_train",
    "n_shared_left_out",
    "n_test",
    *[f"{m}{x}" for m in ("auroc", "aupr") for x in ("", "_lo", "_hi")],
    "error",
    "notes",
]


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if jsonable(r.get(k)) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


@dataclass
class EvalReport:
    """What :func:`evaluate` measured.

    ``results``: one dict per dataset x detector (columns :data:`RESULT_COLUMNS`);
    ``transfer``: one dict per detector x train dataset x other test dataset;
    ``lodo``: one dict per detector x left-out dataset;
    ``paired``: per dataset, the fusion against the best single detector;
    ``runs``: per dataset, ``n``, ``n_questions`` and ``pct_halluc``;
    ``family_weights``: per dataset, the fusion's mean weight per signal family;
    ``oof``: per dataset, ``{detector: [repeats, n] out-of-fold scores}`` with ``labels``,
    ``lengths`` (answer tokens) and ``index`` (trace index in the run) per dataset (the plots;
    saved as ``scores_<dataset>.json``);
    ``files``: what was written.
    """

    results: list[dict[str, Any]]
    transfer: list[dict[str, Any]]
    runs: dict[str, dict[str, float]]
    lodo: list[dict[str, Any]] = field(default_factory=list)
    paired: dict[str, Any] = field(default_factory=dict)
    family_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    oof: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    labels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    lengths: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    index: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Per dataset, each evaluated answer's trace index in its run directory."""
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    cells: str = ""
    """What the checkpoints gave: cells read, computed, stale, damaged (not saved)."""

    def failed_everywhere(self) -> list[str]:
        """Detectors that have a result row on some run and an error on every one of them."""
        rows: dict[str, list[bool]] = {}
        for r in self.results:
            rows.setdefault(r["detector"], []).append(bool(r.get("error")))
        return [d for d, errs in rows.items() if errs and all(errs)]

    def row(self, dataset: str, detector: str) -> dict[str, Any]:
        for r in self.results:
            if r["dataset"] == dataset and r["detector"] == detector:
                return r
        raise KeyError((dataset, detector))

    def transfer_matrix(self, detector: str, metric: str = "auroc") -> dict[str, dict[str, float]]:
        """``{train_dataset: {test_dataset: value}}`` for one detector; the diagonal is the
        in-dataset cross-validated result."""
        out: dict[str, dict[str, float]] = {}
        for r in self.results:
            if r["detector"] == detector:
                out.setdefault(r["dataset"], {})[r["dataset"]] = r.get(metric)
        for r in self.transfer:
            if r["detector"] == detector:
                out.setdefault(r["train_dataset"], {})[r["test_dataset"]] = r.get(metric)
        return out

    def by_run(self) -> dict[str, Any]:
        """Per dataset: per detector the pooled AUROC with its CI and the leave-one-dataset-out
        AUROC with its CI; the best single detector and the fusion's paired comparison."""
        out: dict[str, Any] = {}
        for ds in self.runs:
            dets = {}
            for r in self.results:
                if r["dataset"] != ds:
                    continue
                dets[r["detector"]] = {
                    "auroc": r["auroc"],
                    "auroc_ci": [r["auroc_lo"], r["auroc_hi"]],
                    "lodo_auroc": r["lodo_auroc"],
                    "lodo_auroc_ci": [r["lodo_auroc_lo"], r["lodo_auroc_hi"]],
                    "error": r.get("error", ""),
                }
            out[ds] = {
                **self.runs[ds],
                "detectors": dets,
                "best_single": best_single(self.results, ds),
                "fusion_vs_best": self.paired.get(ds),
                "fusion_family_weights": self.family_weights.get(ds),
            }
        return out

    def to_markdown(self) -> str:
        from hallugraph.evaluation.tables import markdown

        return markdown(self)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        _write_csv(path, self.results, RESULT_COLUMNS)
        return path

    def transfer_to_csv(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        _write_csv(path, self.transfer, TRANSFER_COLUMNS)
        return path

    def lodo_to_csv(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        rows = [{**r, "train_datasets": "; ".join(r["train_datasets"])} for r in self.lodo]
        _write_csv(path, rows, LODO_COLUMNS)
        return path

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": self.config,
            "runs": self.runs,
            "by_run": self.by_run(),
            "results": self.results,
            "paired": self.paired,
            "family_weights": self.family_weights,
            "transfer": self.transfer,
            "lodo": self.lodo,
        }
        atomic_write_text(path, json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
        return path

    def scores_to_json(self, dataset: str, path: str | os.PathLike[str]) -> Path:
        """Per-answer out-of-fold scores of ``dataset``: trace index in the run, label, and per
        detector one list of scores per repeat."""
        path = Path(path)
        run = next((r["run"] for r in self.results if r["dataset"] == dataset), "")
        payload = {
            "dataset": dataset,
            "run": run,
            "trace_index": self.index.get(dataset, np.zeros(0)),
            "label": self.labels.get(dataset, np.zeros(0)),
            "answer_tokens": self.lengths.get(dataset, np.zeros(0)),
            "scores": {k: np.round(v, 6) for k, v in self.oof.get(dataset, {}).items()},
        }
        atomic_write_text(path, json.dumps(jsonable(payload), allow_nan=False) + "\n")
        return path

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``results.md``, ``results.csv``, ``transfer.csv``, ``lodo.csv``, per run the
        plots (ROC, AUROC by answer length, the fusion's family weights) and the out-of-fold
        scores (``scores_<dataset>.json``), and ``results.json`` into ``out_dir``."""
        from hallugraph.evaluation.plots import plot_family_weights, plot_length_bins, plot_roc

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a directory")
        out.mkdir(parents=True, exist_ok=True)
        # every file is written atomically (temporary name, rename); results.json last: a
        # results.json newer than the other files means the whole set is from one evaluation
        md = atomic_write_text(out / "results.md", self.to_markdown())
        files = [md, self.to_csv(out / "results.csv")]
        files.append(self.transfer_to_csv(out / "transfer.csv"))
        files.append(self.lodo_to_csv(out / "lodo.csv"))
        for ds in self.runs:
            files.append(plot_roc(self, ds, out / f"roc_{_slug(ds)}.png"))
            files.append(plot_length_bins(self, ds, out / f"length_{_slug(ds)}.png"))
            files.append(self.scores_to_json(ds, out / f"scores_{_slug(ds)}.json"))
            if self.family_weights.get(ds):
                files.append(plot_family_weights(self, ds, out / f"fusion_weights_{_slug(ds)}.png"))
        files.append(self.to_json(out / "results.json"))
        self.out_dir, self.files = out, files
        return files


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"

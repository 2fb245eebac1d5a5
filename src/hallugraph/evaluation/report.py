"""The evaluation's outputs: the table (``results.md``), CSV and JSON files, the transfer matrix and
one ROC plot per dataset."""

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
from hallugraph.io import atomic_write_bytes, atomic_write_text, jsonable
from hallugraph.metrics import roc_auc
from hallugraph.splits import SPLITS


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def _fmt_ci(row: Mapping[str, Any], m: str) -> str:
    v, lo, hi = row.get(m), row.get(f"{m}_lo"), row.get(f"{m}_hi")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return _fmt(v)
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


RESULT_COLUMNS = [
    "dataset",
    "detector",
    "family",
    "supervised",
    "n_train",
    "n_val",
    "n_test",
    "pct_halluc_test",
    *[f"{m}{x}" for m in METRICS for x in ("", "_lo", "_hi")],
    "auroc_lm",
    "auroc_lm_lo",
    "auroc_lm_hi",
    "n_pairs_lm",
    "threshold",
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
    "pct_halluc_test",
    *[f"{m}{x}" for m in ("auroc", "acc") for x in ("", "_lo", "_hi")],
    "threshold",
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
    ``transfer``: one dict per detector x train dataset x test dataset;
    ``splits``: per dataset, ``n`` and ``pct_halluc`` of each split;
    ``curves``: per dataset, ``{detector: (y_test, scores)}`` (for the ROC plots; not saved);
    ``files``: what was written.
    """

    results: list[dict[str, Any]]
    transfer: list[dict[str, Any]]
    splits: dict[str, dict[str, dict[str, float]]]
    config: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=dict, repr=False
    )
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)

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
        """``{train_dataset: {test_dataset: value}}`` for one detector."""
        out: dict[str, dict[str, float]] = {}
        for r in self.transfer:
            if r["detector"] == detector:
                out.setdefault(r["train_dataset"], {})[r["test_dataset"]] = r.get(metric)
        return out

    def to_markdown(self) -> str:
        lines = ["| dataset | split | n | % hallucinated |", "|---|---|---:|---:|"]
        for ds, sp in self.splits.items():
            for k in SPLITS:
                lines.append(f"| {ds} | {k} | {sp[k]['n']} | {_fmt(sp[k]['pct_halluc'], 1)} |")
        lines += [
            "",
            "| dataset | detector | family | AUROC [95% CI] | AUPR [95% CI] | Acc [95% CI] "
            "| F1 [95% CI] | AUROC len-matched [95% CI] (pairs) | fit s | fit MB | notes |",
            "|---|---|---|---|---|---|---|---|---:|---:|---|",
        ]
        for r in self.results:
            note = f"error: {r['error']}" if r.get("error") else r.get("notes", "")
            note = str(note).replace("|", "\\|").replace("\n", " ")
            cells = [_fmt_ci(r, m) for m in METRICS]
            cells.append(f"{_fmt_ci(r, 'auroc_lm')} ({r.get('n_pairs_lm', '')})")
            lines.append(
                f"| {r['dataset']} | {r['detector']} | {r['family']} | "
                + " | ".join(cells)
                + f" | {_fmt(r.get('fit_s'), 2)} | {_fmt(r.get('fit_peak_mb'), 0)} | {note} |"
            )
        warns = self.config.get("warnings") or []
        if warns:
            lines += ["", "Warnings:"]
            lines += [f"* {w}" for w in warns]
        skipped = self.config.get("skipped") or []
        if skipped:
            lines += ["", "Skipped (not applicable to the run):"]
            lines += [f"* {s['detector']} on {s['dataset']}: {s['reason']}" for s in skipped]
        datasets = list(self.splits)
        if len(datasets) > 1 and self.transfer:
            lines += ["", "Transfer: AUROC [95% CI], rows = train dataset, columns = test dataset."]
            for det in dict.fromkeys(r["detector"] for r in self.transfer):
                cell = {
                    (r["train_dataset"], r["test_dataset"]): (
                        "error" if r.get("error") else _fmt_ci(r, "auroc")
                    )
                    for r in self.transfer
                    if r["detector"] == det
                }
                lines += [
                    "",
                    f"**{det}**",
                    "",
                    "| train \\ test | " + " | ".join(datasets) + " |",
                    "|---|" + "---|" * len(datasets),
                ]
                for a in datasets:
                    row = " | ".join(cell.get((a, b), "") for b in datasets)
                    lines.append(f"| {a} | {row} |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        _write_csv(path, self.results, RESULT_COLUMNS)
        return path

    def transfer_to_csv(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        _write_csv(path, self.transfer, TRANSFER_COLUMNS)
        return path

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": self.config,
            "splits": self.splits,
            "results": self.results,
            "transfer": self.transfer,
        }
        atomic_write_text(path, json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
        return path

    def plot_roc(self, dataset: str, path: str | os.PathLike[str]) -> Path:
        """ROC curves of every detector that scored ``dataset``'s test split, on one axes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import roc_curve

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sp = self.splits[dataset]["test"]
        fig, ax = plt.subplots(figsize=(6, 6))
        try:
            ax.plot([0, 1], [0, 1], ls=(0, (1, 3)), color="grey", lw=1, label="chance")
            styles = ("-", "--", "-.", ":")
            for i, (det, (y, s)) in enumerate(self.curves.get(dataset, {}).items()):
                if len(np.unique(y)) < 2:
                    continue
                fpr, tpr, _ = roc_curve(y, s)
                ax.plot(
                    fpr,
                    tpr,
                    lw=1.5,
                    color=f"C{i % 10}",
                    ls=styles[(i // 10) % len(styles)],
                    label=f"{det} (AUROC {roc_auc(y, s):.3f})",
                )
            ax.set_xlim(-0.01, 1.01)
            ax.set_ylim(-0.01, 1.01)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate (hallucinated)")
            ax.set_title(f"{dataset}: test n={sp['n']}, {_fmt(sp['pct_halluc'], 1)}% hallucinated")
            ax.legend(loc="lower right", fontsize=8)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=120)
        finally:
            plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``results.md``, ``results.csv``, ``results.json``, ``transfer.csv`` and
        ``roc_<dataset>.png`` into ``out_dir``."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a directory")
        out.mkdir(parents=True, exist_ok=True)
        # every file is written atomically (temporary name, rename); results.json last: a
        # results.json newer than the other files means the whole set is from one evaluation
        md = atomic_write_text(out / "results.md", self.to_markdown())
        files = [md, self.to_csv(out / "results.csv")]
        files.append(self.transfer_to_csv(out / "transfer.csv"))
        for ds in self.splits:
            files.append(self.plot_roc(ds, out / f"roc_{_slug(ds)}.png"))
        files.append(self.to_json(out / "results.json"))
        self.out_dir, self.files = out, files
        return files


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"


# --------------------------------------------------------------------------------------------
# evaluation

"""The seed's hypothesis, tested per dataset and layer: *hallucinated answers put a smaller share
of their attention on the context than correct ones* (the premise of Lookback Lens, Chuang et
al., EMNLP 2024; context = the retrieved document when the trace has a ``context_span``, else
the whole prompt).

Data: the ``graph_topology`` statistic (:mod:`hallugraph.features.topology`), read through
:class:`~hallugraph.features.FeatureTable`, so its cache is reused and nothing is recomputed.
Per layer, the *context share* of a trace is the mean over its answer tokens of the share of
their (mean-over-heads) attention on the context columns; the *prompt share* is the same with
the whole prompt (both measures are tested, the verdict reads the context share).

Per run (one dataset), measure and layer, hallucinated (label 1) vs correct (label 0):

* **Mann-Whitney U**, two-sided (``scipy.stats.mannwhitneyu``): no normality assumption, the
  shares are bounded and skewed;
* **Cliff's delta** ``= P(h > c) - P(h < c) = 2 U_h / (n_h n_c) - 1`` (equal to the
  rank-biserial correlation): negative when hallucinated answers look *less* at the context;
* **Cohen's d** ``= (mean_h - mean_c) / pooled sd`` (same sign convention);
* **multiple testing**: the ``L`` p-values of a run and measure are corrected together, Holm
  (family-wise error, the default) or Benjamini-Hochberg (``correction="bh"``, false discovery
  rate). A layer is *significant* when its corrected p-value is ``< alpha`` (0.05).

**Verdict** per dataset (context share): with ``lower`` = significant layers where Cliff's delta
< 0 (the hypothesis' direction) and ``higher`` = significant layers where it is > 0,

* ``confirmed`` — ``lower >= 1`` and ``higher == 0``;
* ``mixed`` — ``lower >= 1`` and ``higher >= 1``;
* ``refuted`` — ``lower == 0``: no layer supports it, either because no layer differs (reason
  "no significant layer": the data show no difference at this sample size) or because the
  significant layers all go the other way (reason "opposite direction");
* ``untestable`` — fewer than 2 traces in one of the groups.

Outputs (:meth:`HypothesisReport.save`): ``hypothesis.csv`` (one row per dataset, measure and
layer), ``hypothesis.json`` (the same + verdicts and the rule) and ``hypothesis_<dataset>.png``
(mean +- 95 % t-interval of each group across layers, significant layers marked).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sst

from hallugraph.evaluation.effects import (
    CORRECTIONS,
    adjust_pvalues,
    cliffs_delta,
    cohens_d,
    mean_ci,
)
from hallugraph.features import FeatureTable
from hallugraph.io import save_png

__all__ = [
    "HYPOTHESIS",
    "MEASURES",
    "HypothesisReport",
    "adjust_pvalues",
    "cliffs_delta",
    "cohens_d",
    "compare_layers",
    "run_hypothesis",
    "verdict",
]

HYPOTHESIS = (
    "hallucinated answers put a smaller share of their attention on the context "
    "(retrieved document, else the prompt) than correct answers"
)
STAT = "graph_topology"
MEASURES: dict[str, str] = {"context": "context_share", "prompt": "prompt_share"}
"""Measure name -> column of the ``graph_topology`` statistic."""
PRIMARY = "context"
RULE = (
    "significant layer: corrected p < alpha; lower/higher: significant with Cliff's delta < 0 / "
    "> 0; confirmed: lower >= 1 and higher == 0; mixed: lower >= 1 and higher >= 1; refuted: "
    "lower == 0; untestable: a group has fewer than 2 traces"
)


def compare_layers(
    values: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.05,
    correction: str = "holm",
) -> list[dict[str, Any]]:
    """One row per layer comparing ``values`` ``[n, L]`` of hallucinated (label 1) vs correct
    (label 0) traces: group sizes, means with 95 % CIs, Mann-Whitney U (of the hallucinated
    group) and its two-sided p-value, Cliff's delta, Cohen's d, corrected p and significance."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if values.ndim != 2 or len(values) != len(labels):
        raise ValueError(f"values must be [n, L] with n = len(labels), not {values.shape}")
    hal, cor = values[labels == 1], values[labels == 0]
    rows = []
    for layer in range(values.shape[1]):
        h, c = hal[:, layer], cor[:, layer]
        h, c = h[np.isfinite(h)], c[np.isfinite(c)]
        u, p = float("nan"), float("nan")
        if len(h) >= 2 and len(c) >= 2:
            if np.ptp(np.concatenate([h, c])) == 0:  # every value equal: no difference at all
                u, p = len(h) * len(c) / 2, 1.0
            else:
                res = sst.mannwhitneyu(h, c, alternative="two-sided")
                u, p = float(res.statistic), float(res.pvalue)
        mh, lo_h, hi_h = mean_ci(h)
        mc, lo_c, hi_c = mean_ci(c)
        rows.append(
            {
                "layer": layer,
                "n_hallucinated": int(len(h)),
                "n_correct": int(len(c)),
                "mean_hallucinated": mh,
                "ci_low_hallucinated": lo_h,
                "ci_high_hallucinated": hi_h,
                "mean_correct": mc,
                "ci_low_correct": lo_c,
                "ci_high_correct": hi_c,
                "u": u,
                "p": p,
                "cliffs_delta": cliffs_delta(h, c),
                "cohens_d": cohens_d(h, c),
            }
        )
    adj = adjust_pvalues([r["p"] for r in rows], correction)
    for r, pa in zip(rows, adj, strict=True):
        r["p_adj"] = float(pa)
        r["significant"] = bool(np.isfinite(pa) and pa < alpha)
    return rows


def verdict(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """``(verdict, reason)`` from one dataset's per-layer rows (see the module docstring)."""
    if not rows or any(r["n_hallucinated"] < 2 or r["n_correct"] < 2 for r in rows):
        n_h = min((r["n_hallucinated"] for r in rows), default=0)
        n_c = min((r["n_correct"] for r in rows), default=0)
        return "untestable", f"{n_h} hallucinated / {n_c} correct traces: need 2 of each"
    lower = [r["layer"] for r in rows if r["significant"] and r["cliffs_delta"] < 0]
    higher = [r["layer"] for r in rows if r["significant"] and r["cliffs_delta"] > 0]
    L = len(rows)
    if lower and not higher:
        return "confirmed", f"lower in {len(lower)}/{L} layers {_layers(lower)}, higher in none"
    if lower and higher:
        return (
            "mixed",
            f"lower in {len(lower)}/{L} layers {_layers(lower)}, "
            f"higher in {len(higher)}/{L} {_layers(higher)}",
        )
    if higher:
        return (
            "refuted",
            f"opposite direction: higher in {len(higher)}/{L} layers {_layers(higher)}",
        )
    return "refuted", f"no significant layer of {L}"


def _layers(layers: Sequence[int]) -> str:
    return "[" + ",".join(str(x) for x in layers) + "]"


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


@dataclass
class HypothesisReport:
    """Per-layer tests of every dataset (``rows``) and one verdict per dataset."""

    rows: list[dict[str, Any]]
    verdicts: dict[str, dict[str, Any]]
    alpha: float
    correction: str
    runs: dict[str, str] = field(default_factory=dict)

    def table(self, measure: str = PRIMARY) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["measure"] == measure]

    def to_markdown(self, measure: str = PRIMARY) -> str:
        head = (
            "| dataset | layer | n hal/cor | mean hal | mean cor | Cliff's δ | Cohen's d "
            f"| p | p {self.correction} | sig |"
        )
        lines = [
            f"Hypothesis: {HYPOTHESIS} (measure: {measure} share; two-sided Mann-Whitney U, "
            f"{self.correction} across layers, alpha {self.alpha})",
            "",
            head,
            "|" + "---|" * 10,
        ]
        for r in self.table(measure):
            lines.append(
                f"| {r['dataset']} | {r['layer']} | {r['n_hallucinated']}/{r['n_correct']} "
                f"| {_fmt(r['mean_hallucinated'])} | {_fmt(r['mean_correct'])} "
                f"| {_fmt(r['cliffs_delta'], 2)} | {_fmt(r['cohens_d'], 2)} | {_fmt(r['p'])} "
                f"| {_fmt(r['p_adj'])} | {'*' if r['significant'] else ''} |"
            )
        return "\n".join(lines)

    def verdict_lines(self) -> list[str]:
        return [f"{d}: {v['verdict']} ({v['reason']})" for d, v in self.verdicts.items()]

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        columns = list(self.rows[0]) if self.rows else ["dataset", "measure", "layer"]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: "" if _nan(r.get(k)) else r.get(k) for k in columns})
        return path

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        payload = {
            "hypothesis": HYPOTHESIS,
            "statistic": STAT,
            "measures": MEASURES,
            "primary_measure": PRIMARY,
            "test": "Mann-Whitney U, two-sided",
            "correction": self.correction,
            "alpha": self.alpha,
            "rule": RULE,
            "runs": self.runs,
            "verdicts": self.verdicts,
            "tests": [{k: (None if _nan(v) else v) for k, v in r.items()} for r in self.rows],
        }
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        return path

    def plot(self, dataset: str, path: str | os.PathLike[str]) -> Path:
        """Mean +- 95 % CI of each group across layers, one panel per measure; significant
        layers marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, axes = plt.subplots(1, len(MEASURES), figsize=(6 * len(MEASURES), 4.5), sharex=True)
        try:
            for ax, measure in zip(np.atleast_1d(axes), MEASURES, strict=True):
                rows = [r for r in self.rows if r["dataset"] == dataset and r["measure"] == measure]
                layers = np.array([r["layer"] for r in rows])
                for grp, color, name in (
                    ("hallucinated", "C3", "hallucinated (1)"),
                    ("correct", "C0", "correct (0)"),
                ):
                    m = np.array([r[f"mean_{grp}"] for r in rows], dtype=float)
                    lo = np.array([r[f"ci_low_{grp}"] for r in rows], dtype=float)
                    hi = np.array([r[f"ci_high_{grp}"] for r in rows], dtype=float)
                    n = rows[0][f"n_{grp}"] if rows else 0
                    ax.plot(layers, m, color=color, lw=1.6, marker=".", label=f"{name}, n={n}")
                    ax.fill_between(layers, lo, hi, color=color, alpha=0.2, lw=0)
                sig = [r for r in rows if r["significant"]]
                if sig:
                    top = np.nanmax([r["ci_high_hallucinated"] for r in rows] + [0])
                    top = max(top, np.nanmax([r["ci_high_correct"] for r in rows]))
                    ax.scatter(
                        [r["layer"] for r in sig],
                        [top * 1.04 + 0.01] * len(sig),
                        marker="*",
                        s=60,
                        color="black",
                        label=f"{self.correction} p < {self.alpha}",
                    )
                ax.set_xlabel("layer")
                ax.set_ylabel(f"answer attention share on the {measure}")
                ax.set_title(f"{measure} share")
                ax.legend(fontsize=8)
            v = self.verdicts.get(dataset, {})
            fig.suptitle(f"{dataset}: {v.get('verdict', '')} ({v.get('reason', '')})", fontsize=10)
            return save_png(fig, path)
        finally:
            plt.close(fig)

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``hypothesis.csv``, ``hypothesis.json`` and ``hypothesis_<dataset>.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = [self.to_csv(out / "hypothesis.csv"), self.to_json(out / "hypothesis.json")]
        for d in self.verdicts:
            files.append(self.plot(d, out / f"hypothesis_{_slug(d)}.png"))
        return files


def _nan(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "run"


def _dataset_names(tables: Sequence[FeatureTable], runs: Sequence[str]) -> list[str]:
    names: list[str] = []
    for table, run in zip(tables, runs, strict=True):
        base = str(table.run_info[0].get("dataset") or Path(run).name)
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def run_hypothesis(
    runs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    alpha: float = 0.05,
    correction: str = "holm",
    progress: bool = False,
) -> HypothesisReport:
    """Test the hypothesis on each labeled run (one dataset each); save the outputs in
    ``out_dir`` when given."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, not {correction!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    runs = [str(r) for r in runs]
    tables = [FeatureTable.from_run(r, progress=progress) for r in runs]
    names = _dataset_names(tables, runs)
    rows: list[dict[str, Any]] = []
    verdicts: dict[str, dict[str, Any]] = {}
    for name, table in zip(names, tables, strict=True):
        y = table.labels
        for measure, output in MEASURES.items():
            values = table.stat(f"{STAT}.{output}")  # [n, layers]
            layer_rows = compare_layers(values, y, alpha=alpha, correction=correction)
            for r in layer_rows:
                rows.append({"dataset": name, "measure": measure, **r})
            if measure == PRIMARY:
                v, reason = verdict(layer_rows)
                verdicts[name] = {
                    "verdict": v,
                    "reason": reason,
                    "n_hallucinated": int((y == 1).sum()),
                    "n_correct": int((y == 0).sum()),
                    "significant_lower": [
                        r["layer"] for r in layer_rows if r["significant"] and r["cliffs_delta"] < 0
                    ],
                    "significant_higher": [
                        r["layer"] for r in layer_rows if r["significant"] and r["cliffs_delta"] > 0
                    ],
                }
    report = HypothesisReport(
        rows, verdicts, alpha, correction, runs=dict(zip(names, runs, strict=True))
    )
    if out_dir is not None:
        report.save(out_dir)
    return report

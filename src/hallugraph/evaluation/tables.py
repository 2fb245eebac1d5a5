"""The evaluation's markdown table (``results.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hallugraph.evaluation.bootstrap import METRICS


def fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def fmt_ci(row: Mapping[str, Any], m: str) -> str:
    v, lo, hi = row.get(m), row.get(f"{m}_lo"), row.get(f"{m}_hi")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return fmt(v)
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def _fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(report: Any) -> str:
    """The table of an :class:`~hallugraph.evaluation.report.EvalReport`."""
    cfg = report.config
    lines = [
        f"Protocol: {cfg.get('protocol', '')}. CIs: {cfg.get('ci', '')}.",
        "",
        "| dataset | answers | questions | % hallucinated |",
        "|---|---:|---:|---:|",
    ]
    for ds, r in report.runs.items():
        lines.append(f"| {ds} | {r['n']} | {r['n_questions']} | {fmt(r['pct_halluc'], 1)} |")
    lines += [
        "",
        "| dataset | detector | family | AUROC [95% CI] | vs best: ΔAUROC [95% CI], p "
        "| AUPR [95% CI] | Acc [95% CI] | F1 [95% CI] | AUROC len-matched [95% CI] (pairs) "
        "| leave-one-dataset-out AUROC [95% CI] | fit s | fit MB | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---:|---:|---|",
    ]
    for r in report.results:
        note = f"error: {r['error']}" if r.get("error") else r.get("notes", "")
        if math.isnan(float(r.get("vs_best_diff", float("nan")))):
            vs = "best" if not r.get("error") and not math.isnan(r["auroc"]) else "n/a"
        else:
            vs = (
                f"{r['vs_best_diff']:+.3f} [{fmt(r['vs_best_lo'])}, {fmt(r['vs_best_hi'])}], "
                f"p {_fmt_p(r['vs_best_p'])}"
            )
        cells = [fmt_ci(r, "auroc"), vs] + [fmt_ci(r, m) for m in METRICS[1:]]
        cells.append(f"{fmt_ci(r, 'auroc_lm')} ({r.get('n_pairs_lm', '')})")
        cells.append(fmt_ci(r, "lodo_auroc"))
        lines.append(
            f"| {r['dataset']} | {r['detector']} | {r['family']} | "
            + " | ".join(cells)
            + f" | {fmt(r.get('fit_s'), 2)} | {fmt(r.get('fit_peak_mb'), 0)} | {_cell(note)} |"
        )
    if report.paired:
        lines += ["", "Fusion against the best single detector (paired question bootstrap):"]
        for ds, c in report.paired.items():
            lines.append(
                f"* {ds}: fusion − {c['best_single']} = {c['diff']:+.3f} "
                f"[{fmt(c['diff_lo'])}, {fmt(c['diff_hi'])}], p {_fmt_p(c['p'])}"
            )
    warns = cfg.get("warnings") or []
    if warns:
        lines += ["", "Warnings:"]
        lines += [f"* {w}" for w in warns]
    skipped = cfg.get("skipped") or []
    if skipped:
        lines += ["", "Skipped (not applicable to the run):"]
        lines += [f"* {s['detector']} on {s['dataset']}: {s['reason']}" for s in skipped]
    datasets = list(report.runs)
    if len(datasets) > 1 and report.transfer:
        lines += [
            "",
            "Transfer: AUROC [95% CI], rows = train dataset (all of it), columns = test dataset "
            "(its questions the train dataset does not hold; the diagonal is the in-dataset "
            "cross-validated AUROC).",
        ]
        for det in dict.fromkeys(r["detector"] for r in report.transfer):
            cell = {
                (r["train_dataset"], r["test_dataset"]): (
                    "error" if r.get("error") else f"{fmt_ci(r, 'auroc')} (n={r['n_test']})"
                )
                for r in report.transfer
                if r["detector"] == det
            }
            for r in report.results:
                if r["detector"] == det:
                    cell[(r["dataset"], r["dataset"])] = fmt_ci(r, "auroc")
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

"""The Markdown tables of docs/BENCHMARKS.md's Groundedness section, printed from the report's
JSON (``hallugraph groundedness-eval ... --report-dir docs/benchmark``):

    .venv/bin/python benchmarks/groundedness_tables.py docs/benchmark/groundedness.json

Prints the sweep (node budget x target mode: validation AUROC, seconds per answer) and, per run,
the metrics on the length-matched test answers with their 95 % question-bootstrap CIs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

METRICS = (
    ("accuracy_T0.4_alpha_val", "accuracy, T = 0.4 (report), α from validation"),
    ("accuracy_T0.4_alpha_0.5", "accuracy, T = 0.4 (report), α = 0.5"),
    ("accuracy_alpha_T_val", "accuracy, α and T from validation"),
    ("auroc_groundedness", "AUROC `groundedness` (−G)"),
    ("auroc_groundedness_lr", "AUROC `groundedness_lr` (Gctx, RS, CS; fitted on {on})"),
    ("auroc_gctx", "AUROC Gctx alone (low = hallucinated)"),
    ("auroc_rs", "AUROC RS alone"),
    ("auroc_cs", "AUROC CS alone"),
    ("auroc_lookback_lens", "AUROC Lookback Lens (fitted on train)"),
    ("auroc_graph_topology", "AUROC `graph_topology` (fitted on train)"),
    ("auroc_answer_length", "AUROC answer-length control"),
)


def _ci(m: Any) -> str:
    if not isinstance(m, dict) or m.get("value") is None:
        return "–"
    if m.get("lo") is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['lo']:.2f}, {m['hi']:.2f}]"


def _num(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def sweep_table(res: dict[str, Any]) -> str:
    sw = res.get("sweep") or {}
    rows = sw.get("table", [])
    out = [
        "| nodes | targets | answers | AUROC G (val) | AUROC Gctx (val) | α | CPU s / answer "
        "| timed answers | prefix max diff |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['nodes']} | {r['targets']} | {r['answers']} | {_num(r['auroc'], '.3f')} "
            f"| {_num(r['auroc_gctx'], '.3f')} | {_num(r['alpha'], '.2f')} "
            f"| {_num(r['cpu_s_per_answer'], '.1f')} | {r.get('timed', '–')} "
            f"| {_num(r.get('prefix_max_diff'), '.1e')} |"
        )
    chosen = sw.get("chosen", {})
    out.append(f"\nchosen: {chosen.get('nodes')} nodes, targets {chosen.get('targets')}")
    return "\n".join(out)


def metrics_table(res: dict[str, Any]) -> str:
    runs = list(res["metrics"])
    head = "| metric | " + " | ".join(f"`{r}`" for r in runs) + " |"
    out = [head, "|---|" + "---|" * len(runs)]
    out.append(
        "| test answers (hallucinated + grounded), questions | "
        + " | ".join(
            f"{m.get('n_test')} ({m.get('n_test_hallucinated')} + {m.get('n_test_grounded')}), "
            f"{m.get('n_questions')}"
            for m in res["metrics"].values()
        )
        + " |"
    )
    on = {m.get("groundedness_lr_fitted_on", "train") for m in res["metrics"].values()}
    for key, label in METRICS:
        label = label.format(on=" / ".join(sorted(on)).replace("val", "validation"))
        out.append(f"| {label} | " + " | ".join(_ci(m.get(key)) for m in res["metrics"].values()))
        out[-1] += " |"
    cpu = res.get("cpu_seconds")
    if cpu:
        out.append(
            f"\nCPU seconds: steps {cpu['steps_cpu_s']}, scoring (sum of per-answer seconds) "
            f"{cpu['scoring_answer_s']}, total {cpu['total_s']}"
        )
    if res.get("not_reported"):
        out.append(f"\nnot in this partial report: {', '.join(res['not_reported'])}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", default="docs/benchmark/groundedness.json")
    res = json.loads(Path(ap.parse_args().json).read_text())
    print(
        f"node budget {res['node_budget']}, targets {res['target_mode']}, "
        f"α = {res['alpha']}, T = {res['T']}, validation balanced accuracy "
        f"{res['validation_balanced_accuracy']}; scored: {res.get('scored')}; "
        f"partial: {res.get('partial')}; CPU: {res.get('cpu')}\n"
    )
    print(sweep_table(res) + "\n")
    print(metrics_table(res))


if __name__ == "__main__":
    main()

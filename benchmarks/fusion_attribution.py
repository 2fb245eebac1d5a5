"""What the attribution family adds to the fusion: ``fusion`` (its default bases, with
``groundedness_lr`` over Gctx / RS / CS) against the same stacking without it, on runs whose
every answer carries Groundedness scores (``hallugraph groundedness-eval``'s runs):

    .venv/bin/python benchmarks/fusion_attribution.py runs/groundedness/halueval_qa_tf \
        runs/groundedness/halueval_qa --out runs/fusion_attribution --processes 1 \
        --json docs/benchmark/fusion_attribution.json

The evaluation is the benchmark table's (grouped, stratified 5-fold x 3 repeats CV, nested
fusion, question-bootstrap CIs; cells resumable under ``--out``), without transfer and
leave-one-out. Per run it prints each detector's pooled AUROC and length-matched AUROC, the
fusion's family weights, and the paired question-bootstrap comparison
``fusion - fusion_no_attribution`` (AUROC difference, 95 % CI, p). Its last line per run is
``run=<name> diff=<x> lo=<x> hi=<x> p=<x>``; exit 1 when a run could not be compared
(``groundedness_lr`` failed: some answer has no Groundedness scores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DETECTORS = ("groundedness_lr", "lookback_lens", "answer_length")
COLUMNS = ("auroc", "auroc_lo", "auroc_hi", "auroc_lm", "auroc_lm_lo", "auroc_lm_hi")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="labeled runs with Groundedness scores")
    ap.add_argument("--out", required=True, help="the evaluation's folder (cells, tables)")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--json", default=None, help="write the comparison here too")
    args = ap.parse_args(argv)

    from hallugraph.detectors.fusion import DEFAULT_BASES, Fusion
    from hallugraph.evaluation.bootstrap import paired_comparison
    from hallugraph.evaluation.cv import load_runs
    from hallugraph.evaluation.protocol import evaluate
    from hallugraph.io import atomic_write_json

    without = Fusion(bases=tuple(b for b in DEFAULT_BASES if b != "groundedness_lr"))
    without.name = "fusion_no_attribution"  # the instance's name in the table
    report = evaluate(
        args.runs,
        detectors=["fusion", without, *DETECTORS],
        folds=args.folds,
        repeats=args.repeats,
        bootstrap=args.bootstrap,
        transfer=False,
        lodo=False,
        out_dir=args.out,
        processes=args.processes,
    )
    runs = load_runs(
        args.runs,
        seed=0,
        n_folds=args.folds,
        n_repeats=args.repeats,
        n_boot=args.bootstrap,
        warnings=[],
    )
    out: dict[str, Any] = {"command": " ".join(sys.argv), "runs": {}}
    last = []
    for run in runs:
        rows = [r for r in report.results if r["dataset"] == run.name]
        oof = report.oof.get(run.name, {})
        entry: dict[str, Any] = {
            "n": int(len(run.y)),
            "hallucinated": int(run.y.sum()),
            "auroc": {r["detector"]: {k: r.get(k) for k in COLUMNS} for r in rows},
            "family_weights": report.family_weights.get(run.name, {}),
        }
        print(f"# {run.name}: {entry['n']} answers, {entry['hallucinated']} hallucinated")
        for r in rows:
            print(
                f"{r['detector']:>24}  AUROC {r.get('auroc')}  "
                f"[{r.get('auroc_lo')}, {r.get('auroc_hi')}]  "
                f"length-matched {r.get('auroc_lm')}  {r.get('error') or ''}"
            )
        print(f"family weights: {entry['family_weights']}")
        glr = next((r for r in rows if r["detector"] == "groundedness_lr"), {})
        if glr.get("error"):  # the fusion dropped it too: the two fusions are the same model
            entry["fusion_minus_no_attribution"] = None
            entry["attribution_missing"] = glr["error"]
            last.append(f"run={run.name} not compared: groundedness_lr failed: {glr['error']}")
        elif "fusion" in oof and without.name in oof:
            cmp = paired_comparison(run.y, oof["fusion"], oof[without.name], run.W)
            entry["fusion_minus_no_attribution"] = cmp
            last.append(
                f"run={run.name} diff={cmp['diff']:.4f} lo={cmp['diff_lo']:.4f} "
                f"hi={cmp['diff_hi']:.4f} p={cmp['p']:.3f}"
            )
        else:
            missing = [d for d in ("fusion", without.name) if d not in oof]
            entry["fusion_minus_no_attribution"] = None
            last.append(f"run={run.name} not compared: no scores of {', '.join(missing)}")
        out["runs"][run.name] = entry
    if args.json:
        atomic_write_json(Path(args.json), out)
    print("\n".join(last))
    return 0 if all(e["fusion_minus_no_attribution"] for e in out["runs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

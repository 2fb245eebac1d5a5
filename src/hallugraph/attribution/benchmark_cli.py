"""``hallugraph groundedness-eval OUT``: the command line of
:mod:`hallugraph.attribution.benchmark` (issue 13's evaluation in one resumable command)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_groundedness_eval_parser(sub: Any) -> None:
    """Register ``groundedness-eval`` (:mod:`hallugraph.attribution.benchmark`)."""
    from hallugraph.attribution.benchmark import DEFAULT_TRANSCODERS

    p = sub.add_parser(
        "groundedness-eval",
        help="the Groundedness benchmark on HaluEval-QA: extract, label, sweep, score, report",
        description="Issue 13's evaluation in one resumable command (re-run it to resume); see "
        "hallugraph.attribution.benchmark and docs/BENCHMARKS.md.",
    )
    p.add_argument("out", help="work folder (runs, sweep, scores), e.g. runs/groundedness")
    p.add_argument("--transcoders", default=DEFAULT_TRANSCODERS, help="set folder or name")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the runs' model)")
    p.add_argument("--questions", type=int, default=None, help="first N questions (all 500)")
    p.add_argument("--nodes", default="32,64,128,256,512", help="sweep node budgets")
    p.add_argument("--sweep-targets", default="first,all")
    p.add_argument(
        "--sweep-all-nodes",
        default=None,
        help="budgets swept with --targets all (one graph per answer token; default: --nodes)",
    )
    p.add_argument("--sweep-answers", type=int, default=150)
    p.add_argument("--sweep-max-answer-tokens", type=int, default=None)
    p.add_argument("--skip-sweep", action="store_true", help="needs --max-feature-nodes, --targets")
    p.add_argument("--max-feature-nodes", type=int, default=None, help="override the knee")
    p.add_argument("--targets", choices=["first", "all"], default=None, help="override the knee")
    p.add_argument("--processes", type=int, default=2, help="parallel scoring processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=int, default=2, help="length matching: answer tokens (±2)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--report-dir", default=None, help="CSV/JSON/PNG folder (OUT/report)")
    p.add_argument("--no-graph-png", action="store_true")
    p.add_argument("--plan-only", action="store_true", help="extract, label, plan; print counts")
    p.add_argument(
        "--partial",
        action="store_true",
        help="no score step: report on the answers scored so far (every length-matched "
        "validation and test answer must be; the JSON says how many were scored)",
    )
    p.add_argument("--no-progress", action="store_true")


def run_groundedness_eval(args: argparse.Namespace) -> int:
    """``hallugraph groundedness-eval OUT``."""
    import json

    from hallugraph.attribution.benchmark import EvalConfig, run_eval

    cfg = EvalConfig(
        out=args.out,
        transcoders=args.transcoders,
        model=args.model,
        questions=args.questions,
        nodes=tuple(int(v) for v in args.nodes.split(",") if v),
        sweep_targets=tuple(v for v in args.sweep_targets.split(",") if v),
        sweep_all_nodes=(
            tuple(int(v) for v in args.sweep_all_nodes.split(",") if v)
            if args.sweep_all_nodes
            else None
        ),
        sweep_answers=args.sweep_answers,
        sweep_max_answer_tokens=args.sweep_max_answer_tokens,
        max_feature_nodes=args.max_feature_nodes,
        targets=args.targets,
        skip_sweep=args.skip_sweep,
        processes=args.processes,
        threads=args.threads,
        seed=args.seed,
        tol=args.tol,
        bootstrap=args.bootstrap,
        report_dir=args.report_dir,
        graph_png=not args.no_graph_png,
        progress=not args.no_progress,
        partial=args.partial,
    )
    try:
        res = run_eval(cfg, plan_only=args.plan_only)
    except RuntimeError as err:  # a step's subprocess failed: it printed why
        print(f"hallugraph: {err}", file=sys.stderr)
        return 1
    keys = ("node_budget", "target_mode", "alpha", "T", "metrics")
    print(json.dumps({k: res[k] for k in keys} if "metrics" in res else res, indent=1))
    return 0

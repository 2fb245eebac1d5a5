"""Command line: ``hallugraph {extract,info,verify,label,stats,evaluate,graph,hypothesis,
transcoders,groundedness,attribution,run}`` (also ``python -m hallugraph``).

Exit codes: 0 success; 1 the command ran but produced no result (every example failed, a
detector failed on every run, a run failed ``verify``); 2 bad input or a damaged run (the
message names the file or the argument); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_RUNS = Path("runs")
MAIN_DATASETS = ("triviaqa", "truthfulqa", "halueval_qa_tf")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="smollm2_135M",
        help="short name, HF id or local path (default: %(default)s)",
    )
    p.add_argument(
        "--quantize", choices=["4bit"], default=None, help="load NF4 4-bit weights (CUDA only)"
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument(
        "--model-dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="dtype the model computes in (auto: float32 on CPU, float16 on GPU)",
    )


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _add_extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-samples", type=_positive_int, default=None, help="first N examples (default: all)"
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=_positive_int,
        default=None,
        help="longest prompt accepted, in tokens (default: the model's context window minus "
        "--max-new-tokens); checked before any compute",
    )
    p.add_argument(
        "--on-long-prompt",
        choices=["skip", "refuse"],
        default="skip",
        help="an example over the context window or --max-prompt-tokens: skip it with an error "
        "row, or refuse the whole run (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy (default); the seed used 5")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--capture",
        choices=["auto", "incremental", "forward"],
        default="auto",
        help="how the final photo is taken (see docs/EXTRACTION.md; default: %(default)s)",
    )
    p.add_argument(
        "--shard-size", type=int, default=500, help="traces per shard (default: %(default)s)"
    )
    p.add_argument(
        "--max-shard-mb",
        type=float,
        default=4096.0,
        help="fewer traces per shard when they would pass this many MB (a shard is held in "
        "memory until written; default: %(default)s)",
    )
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument(
        "--codec",
        choices=["fp16", "predictive"],
        default="fp16",
        help="predictive: store each fp16 tensor losslessly as its difference from the model's "
        "own prediction (several times smaller; reading needs the model, same machine type)",
    )
    p.add_argument(
        "--data-dir", default=None, help="benchmark data folder (or $HALLUGRAPH_DATA_DIR)"
    )
    p.add_argument(
        "--template", default=None, help="prompt template with {question} (and {context})"
    )
    p.add_argument(
        "--keep-tensors",
        choices=["yes", "no"],
        default="yes",
        help="no: compute every statistic per shard, then delete its raw tensors (saves disk)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hallugraph",
        description="Detect LLM hallucinations from the model's own computation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="answer questions and store full-sequence traces")
    _add_model_args(p)
    p.add_argument(
        "--dataset", required=True, help="triviaqa, truthfulqa, halueval_qa, or a .jsonl/.csv file"
    )
    p.add_argument(
        "--columns",
        default=None,
        help="column mapping for your own file, e.g. question=q,references=answers,id=qid",
    )
    p.add_argument("--out", required=True, help="run directory (re-run the same command to resume)")
    _add_extract_args(p)

    p = sub.add_parser("info", help="summarize a run directory")
    p.add_argument("run", help="run directory")

    p = sub.add_parser(
        "verify", help="check every file of runs against their checksums (exit 1 when damaged)"
    )
    p.add_argument("runs", nargs="+", help="run directories")

    p = sub.add_parser("label", help="label every trace of a run (1 = hallucinated)")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument(
        "--method",
        choices=["rouge", "embedding"],
        default="rouge",
        help="TruthfulQA similarity (default: %(default)s)",
    )
    p.add_argument("--spot-check", type=int, default=20, help="random examples written for a human")

    p = sub.add_parser("stats", help="compute (and cache) every statistic the detectors use")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--prune", action="store_true", help="then delete the raw tensors")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("evaluate", help="benchmark every detector on labeled runs")
    p.add_argument("runs", nargs="+", help="labeled run directories (one per dataset)")
    p.add_argument("--detectors", default=None, help="comma-separated names (default: all)")
    p.add_argument("--out", default=None, help="folder for the table, CSV/JSON and ROC plots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--no-transfer", action="store_true", help="skip cross-dataset transfer")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("graph", help="draw one trace's attention graph at one layer (PNG)")
    p.add_argument("run", help="run directory (raw tensors kept)")
    p.add_argument("--index", type=int, required=True, help="trace index in the run")
    p.add_argument("--layer", type=int, required=True, help="layer (negative: from the end)")
    p.add_argument("--png", required=True, help="output PNG file")
    p.add_argument("--top-k", type=int, default=3, help="heaviest in-edges kept per token (3)")
    p.add_argument("--threshold", type=float, default=None, help="minimum edge weight")
    p.add_argument("--heads", choices=["mean", "all"], default="mean")
    p.add_argument(
        "--hide-sink", action="store_true", help="drop the edges out of token 0 (attention sink)"
    )

    p = sub.add_parser(
        "hypothesis", help="test: hallucinated answers attend less to the context (per layer)"
    )
    p.add_argument("runs", nargs="+", help="labeled run directories (one per dataset)")
    p.add_argument("--out", required=True, help="folder for hypothesis.csv/json and the plots")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--correction", choices=["holm", "bh"], default="holm")
    p.add_argument("--no-progress", action="store_true")

    from hallugraph.attribution.cli import (
        add_attribution_parser,
        add_groundedness_parser,
        add_transcoders_parser,
    )

    add_transcoders_parser(sub)  # hallugraph transcoders train ...
    add_groundedness_parser(sub)  # hallugraph groundedness RUN
    add_attribution_parser(sub)  # hallugraph attribution RUN --index I
    from hallugraph.scoring.cli import add_scoring_parsers

    add_scoring_parsers(sub)  # hallugraph train / score / serve

    from hallugraph.viewer.cli import add_view_parser

    add_view_parser(sub)  # hallugraph view RUN [RUN ...]

    p = sub.add_parser(
        "run", help="the main job: extract on the default model and data, then summarize"
    )
    _add_model_args(p)
    p.add_argument(
        "--datasets", default=",".join(MAIN_DATASETS), help="comma-separated (default: %(default)s)"
    )
    p.add_argument("--out", default=str(DEFAULT_RUNS / "main"), help="parent folder of the runs")
    p.add_argument("--detectors", default=None, help="comma-separated names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000)
    _add_extract_args(p)
    p.set_defaults(num_samples=300, keep_tensors="no")
    return parser


def _settings(args: argparse.Namespace):
    from hallugraph.extract import GenerationSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        batch_size=args.batch_size,
        capture=args.capture,
        template=args.template,
    )


def _extract(args: argparse.Namespace, dataset: str, out: str, columns=None, lm=None) -> int:
    from hallugraph.pipeline import run_extract

    summary = run_extract(
        model=args.model,
        dataset=dataset,
        out=out,
        num_samples=args.num_samples,
        settings=_settings(args),
        shard_size=args.shard_size,
        max_shard_mb=args.max_shard_mb,
        dtype=args.dtype,
        data_dir=args.data_dir,
        columns=columns,
        quantize=args.quantize,
        model_dtype=args.model_dtype,
        device=args.device,
        lm=lm,
        progress=not args.no_progress,
        keep_tensors=args.keep_tensors == "yes",
        codec=args.codec,
        max_prompt_tokens=args.max_prompt_tokens,
        on_long_prompt=args.on_long_prompt,
    )
    print(summary.render())
    return 1 if summary.errors and not summary.total else 0


def _info(run: str) -> int:
    import json

    from hallugraph.store import TraceStore

    store = TraceStore(run)
    info = store.info
    print(
        f"Run {run}: {len(store)} traces, model {info.get('model')}, dataset {info.get('dataset')}"
    )
    print(json.dumps(info.get("generation"), sort_keys=True))
    sizes = store.disk_usage()
    print(f"{len(store.shards)} shards, {sizes['total'] / 2**20:.2f} MB on disk")
    if len(store):
        shard = store.manifest[0]["shard"]
        kept = store.tensors_expected() or store.shard_path(shard).exists()
        t = store.get(0, fields=("hidden_states", "attentions") if kept else ())
        if kept:
            print(
                f"first trace {t['question_id']}: hidden_states {t['hidden_states'].shape}, "
                f"attentions {t['attentions'].shape}, tokens {len(t['tokens'])}"
            )
        else:
            print(f"raw tensors not kept; statistics in {Path(run) / 'stats'}")
        print(f"  Q: {t['question']}\n  A: {t['generated_answer_clean']}")
        labels = [r["label"] for r in store.manifest if "label" in r]
        if labels:
            print(f"labels: {len(labels)}, hallucinated {100 * sum(labels) / len(labels):.1f} %")
    return 0


def _verify(runs: Sequence[str]) -> int:
    from hallugraph.integrity import verify_run

    status = 0
    for run in runs:
        report = verify_run(run)
        print(report.render())
        if not report.ok:
            status = 1
    return status


def _label(runs: Sequence[str], method: str, spot_check: int) -> int:
    from hallugraph.labels import label_run

    for run in runs:
        summary = label_run(run, method=method, spot_check=spot_check)
        print(f"\n{run}\n{summary.render()}")
    return 0


def _stats(runs: Sequence[str], prune: bool, progress: bool) -> int:
    from hallugraph.features import all_statistics, compute_stats
    from hallugraph.store import TraceStore, mark_pruned

    for run in runs:
        arrays = compute_stats(run, all_statistics(), progress=progress)
        print(f"{run}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items()))
        if prune:
            mark_pruned(run)
            store = TraceStore(run)
            for shard in store.shards:
                store.shard_path(shard).unlink(missing_ok=True)
            print(f"  raw tensors deleted; {store.disk_usage()['total'] / 2**20:.1f} MB left")
    return 0


def _evaluate(args: argparse.Namespace, runs: Sequence[str], out: str | None) -> int:
    from hallugraph.evaluate import evaluate

    names = [d.strip() for d in args.detectors.split(",")] if args.detectors else None
    out_dir = Path(out) if out else Path(runs[0]).parent / "eval"
    report = evaluate(
        list(runs),
        names,
        seed=args.seed,
        out_dir=out_dir,
        bootstrap=args.bootstrap,
        transfer=not getattr(args, "no_transfer", False),
        progress=not args.no_progress,
    )
    print(report.to_markdown())
    print(f"\nTable, CSV/JSON and ROC plots in {out_dir}")
    failed = report.failed_everywhere()
    if failed:
        print(
            f"hallugraph: error: detector(s) failed on every run: {', '.join(failed)} "
            "(errors in the table's notes; the other detectors' results are written)",
            file=sys.stderr,
        )
        return 1
    return 0


def _graph(args: argparse.Namespace) -> int:
    from hallugraph.graphs import build_graph, draw_arc_diagram
    from hallugraph.store import TraceStore

    store = TraceStore(args.run)
    if not -len(store) <= args.index < len(store):
        raise ValueError(f"--index {args.index} out of range: {args.run} has {len(store)} traces")
    trace = store[args.index]
    g = build_graph(
        trace,
        args.layer,
        heads=args.heads,
        threshold=args.threshold,
        top_k=args.top_k,
        hide_sink=args.hide_sink,
    )
    path = draw_arc_diagram(g, args.png)
    print(
        f"{path}: trace {trace['question_id']}, layer {g.layer}, {g.num_nodes} tokens, "
        f"{g.num_edges} edges"
    )
    return 0


def _hypothesis(args: argparse.Namespace) -> int:
    from hallugraph.hypotheses import run_hypothesis

    try:
        report = run_hypothesis(
            args.runs,
            args.out,
            alpha=args.alpha,
            correction=args.correction,
            progress=not args.no_progress,
        )
    except FileNotFoundError as err:  # a pruned run without the cached statistic
        raise ValueError(str(err)) from err
    print(report.to_markdown())
    print()
    print("\n".join(report.verdict_lines()))
    print(f"\nhypothesis.csv, hypothesis.json and plots in {args.out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """The main job: extract -> label -> evaluate, on the default model and data."""
    from hallugraph.models import load_model

    lm = load_model(args.model, quantize=args.quantize, device=args.device, dtype=args.model_dtype)
    runs = []
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        print(f"\n=== extract {name} ===")
        out = str(Path(args.out) / name)
        if _extract(args, name, out, lm=lm):
            return 1
        runs.append(out)
    print("\n=== label ===")
    _label(runs, "rouge", 20)
    print("\n=== evaluate ===")
    return _evaluate(args, runs, str(Path(args.out) / "eval"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    from hallugraph.datasets import DatasetError
    from hallugraph.models import ModelError
    from hallugraph.store import StoreError

    try:
        if getattr(args, "scoring", None):  # train / score / serve
            return args.scoring(args)
        if args.command == "extract":
            from hallugraph.datasets import parse_columns

            columns = parse_columns(args.columns) if args.columns else None
            return _extract(args, args.dataset, args.out, columns)
        if args.command == "info":
            return _info(args.run)
        if args.command == "verify":
            return _verify(args.runs)
        if args.command == "label":
            return _label(args.runs, args.method, args.spot_check)
        if args.command == "stats":
            return _stats(args.runs, args.prune, not args.no_progress)
        if args.command == "evaluate":
            return _evaluate(args, args.runs, args.out)
        if args.command == "graph":
            return _graph(args)
        if args.command == "hypothesis":
            return _hypothesis(args)
        if args.command == "run":
            return _run(args)
        if args.command == "transcoders":
            from hallugraph.attribution.cli import run_transcoders

            return run_transcoders(args)
        if args.command == "groundedness":
            from hallugraph.attribution.cli import run_groundedness

            return run_groundedness(args)
        if args.command == "attribution":
            from hallugraph.attribution.cli import run_attribution

            return run_attribution(args)
        if args.command == "view":
            return args.view_func(args)
    except (DatasetError, ModelError, StoreError, ValueError) as err:
        print(f"hallugraph: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "hallugraph: interrupted; what was completed is kept (written atomically), re-run "
            "the same command to resume",
            file=sys.stderr,
        )
        if args.command in ("groundedness", "attribution"):
            # circuit-tracer / nnsight leave native threads behind that abort the interpreter's
            # shutdown ("terminate called without an active exception"); everything is on disk
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    return 0

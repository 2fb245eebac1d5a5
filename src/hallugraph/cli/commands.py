"""The commands: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _settings(args: argparse.Namespace):
    from hallugraph.extract.capture import GenerationSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        capture=args.capture,
        template=args.template,
    )


def cmd_extract(args: argparse.Namespace, dataset: str, out: str, columns=None, lm=None) -> int:
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
        workers=args.workers,
        ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
        threads_per_worker=args.threads_per_worker,
        num_parts=args.num_parts,
        part=args.part,
    )
    print(summary.render())
    return 1 if summary.errors and not summary.total else 0


def cmd_merge(run: str) -> int:
    from hallugraph.pipeline import merge_run

    merged = merge_run(run)
    n = len(merged.done) + len(merged.missing)
    print(f"{run}: {len(merged.done)} of {n} units merged, {len(merged.rows)} traces, ", end="")
    print(f"{len(merged.errors)} errors")
    if merged.missing:
        shown = ", ".join(map(str, merged.missing[:20]))
        more = " ..." if len(merged.missing) > 20 else ""
        print(f"units not done yet: {shown}{more}; run their parts again, then merge again")
        return 1
    return 0


def cmd_info(run: str) -> int:
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


def cmd_verify(runs: Sequence[str]) -> int:
    from hallugraph.features.verify import verify_run

    status = 0
    for run in runs:
        report = verify_run(run)
        print(report.render())
        if not report.ok:
            status = 1
    return status


def cmd_label(runs: Sequence[str], method: str, spot_check: int) -> int:
    from hallugraph.labels import label_run

    for run in runs:
        summary = label_run(run, method=method, spot_check=spot_check)
        print(f"\n{run}\n{summary.render()}")
    return 0


def cmd_stats(runs: Sequence[str], prune: bool, progress: bool) -> int:
    from hallugraph.detectors.registry import detector_statistics
    from hallugraph.features import compute_stats
    from hallugraph.store import TraceStore, mark_pruned

    for run in runs:
        arrays = compute_stats(run, detector_statistics(), progress=progress)
        print(f"{run}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items()))
        if prune:
            mark_pruned(run)
            store = TraceStore(run)
            for shard in store.shards:
                store.shard_path(shard).unlink(missing_ok=True)
            print(f"  raw tensors deleted; {store.disk_usage()['total'] / 2**20:.1f} MB left")
    return 0


def cmd_evaluate(args: argparse.Namespace, runs: Sequence[str], out: str | None) -> int:
    from hallugraph.evaluation import evaluate
    from hallugraph.evaluation.parallel import WorkerCrash

    names = [d.strip() for d in args.detectors.split(",")] if args.detectors else None
    out_dir = Path(out) if out else Path(runs[0]).parent / "eval"
    try:
        report = evaluate(
            list(runs),
            names,
            seed=args.seed,
            out_dir=out_dir,
            bootstrap=args.bootstrap,
            folds=args.folds,
            repeats=args.repeats,
            transfer=not getattr(args, "no_transfer", False),
            lodo=not getattr(args, "no_lodo", False),
            progress=not args.no_progress,
            processes=getattr(args, "processes", 1),
        )
    except WorkerCrash as err:
        print(f"hallugraph: error: {err}", file=sys.stderr)
        return 3
    print(report.to_markdown())
    print(f"\nTable, CSV/JSON and plots in {out_dir}; {report.cells}")
    failed = report.failed_everywhere()
    if failed:
        print(
            f"hallugraph: error: detector(s) failed on every run: {', '.join(failed)} "
            "(errors in the table's notes; the other detectors' results are written)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from hallugraph.graphs.draw import draw_arc_diagram
    from hallugraph.graphs.graph import build_graph
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


def cmd_hypothesis(args: argparse.Namespace) -> int:
    from hallugraph.evaluation.hypotheses import run_hypothesis

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


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: extract -> label -> evaluate, on the default model and data."""
    from hallugraph.models import load_model

    lm = None  # Ray workers load their own
    if args.workers is None and args.ray_address is None:
        lm = load_model(
            args.model, quantize=args.quantize, device=args.device, dtype=args.model_dtype
        )
    runs = []
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        print(f"\n=== extract {name} ===")
        out = str(Path(args.out) / name)
        if cmd_extract(args, name, out, lm=lm):
            return 1
        runs.append(out)
    print("\n=== label ===")
    cmd_label(runs, "rouge", 20)
    print("\n=== evaluate ===")
    return cmd_evaluate(args, runs, str(Path(args.out) / "eval"))

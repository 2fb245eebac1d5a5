"""The attribution command lines: ``hallugraph transcoders {train,eval}``
(:mod:`~hallugraph.attribution.transcoders`), ``hallugraph groundedness RUN``
(:mod:`~hallugraph.attribution.run`) and ``hallugraph attribution RUN --index I``
(:mod:`~hallugraph.attribution.viewer`).

Kept here so that :mod:`hallugraph.cli` only needs two lines per command (register, dispatch).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_transcoders_parser(sub: Any) -> None:
    """Register ``transcoders {train,eval}`` (:mod:`hallugraph.attribution.transcoders.cli`)."""
    from hallugraph.attribution.transcoders.cli import add_parser

    add_parser(sub)


def run_transcoders(args: argparse.Namespace) -> int:
    """Dispatch ``hallugraph transcoders ...``."""
    from hallugraph.attribution.transcoders.cli import run

    return run(args)


# ---------------------------------------------------------------------------------------------
# hallugraph groundedness / hallugraph attribution


def _add_graph_args(p: Any) -> None:
    """Options shared by ``groundedness`` and ``attribution``: model, transcoders, budget."""
    p.add_argument(
        "--transcoders",
        default=None,
        help="transcoder set folder (default: the only one under "
        "~/.cache/hallugraph/transcoders/<model>/)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint folder to attribute with (default: the run's model; for smollm2_135M "
        "its converted checkpoint in the cache)",
    )
    p.add_argument(
        "--max-feature-nodes",
        type=int,
        default=64,
        help="feature nodes per graph (default %(default)s; 0: every active feature; "
        "circuit-tracer's CLI uses 7500)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="feature rows per ranking step / update_interval (circuit-tracer's schedule)",
    )
    p.add_argument(
        "--engine",
        choices=["hallugraph", "circuit-tracer"],
        default="hallugraph",
        help="hallugraph: our engine (default, no circuit-tracer needed); circuit-tracer: its "
        "nnsight backend (extra 'attribution'), the same graphs, for cross-checks",
    )
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def add_groundedness_parser(sub: Any) -> None:
    """Register ``groundedness`` on the main parser's subparsers."""
    p = sub.add_parser(
        "groundedness",
        help="Gctx / RS / CS of every trace with a context, from attribution graphs (resumable)",
        description=(
            "Build the attribution graph (hallugraph's engine, or --engine circuit-tracer; our "
            "transcoders) of every trace of RUN "
            "that has a context span, and store its context share Gctx, replacement score RS "
            "and completeness CS in RUN/attribution/groundedness.json, for the groundedness "
            "detectors. Saved after every trace: interrupted? Run the same command again."
        ),
    )
    p.add_argument("run", help="run directory (e.g. a HaluEval-QA run)")
    _add_graph_args(p)
    p.add_argument(
        "--targets",
        choices=["first", "all"],
        default="first",
        help="logits attributed: the first answer token (default), or every answer token, one "
        "graph each, scores averaged (circuit-tracer attributes the last position only)",
    )
    p.add_argument(
        "--max-answer-tokens", type=int, default=None, help="--targets all: at most N tokens"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first K traces with context")
    p.add_argument(
        "--separate-prefixes",
        action="store_true",
        help="--targets all: one attribution per answer token (default with our engine: one "
        "shared attribution per trace, the same scores to float rounding; records say 'path')",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="score every N-th trace from the K-th (0-based) into its own file, for N parallel "
        "processes; then --merge N",
    )
    p.add_argument(
        "--first",
        default=None,
        metavar="FILE",
        help="JSON list of trace ids to score before the others, in that order",
    )
    p.add_argument("--merge", type=int, default=None, metavar="N", help="fold N shard files in")
    p.add_argument(
        "--overwrite", action="store_true", help="discard scores stored with other settings"
    )
    p.add_argument("--no-progress", action="store_true")


def add_attribution_parser(sub: Any) -> None:
    """Register ``attribution`` on the main parser's subparsers."""
    p = sub.add_parser(
        "attribution",
        help="one trace's attribution graph: viewer JSON + scores JSON, PNG, local viewer",
        description=(
            "Attribute one answer token of one trace (default: the first) and write the graph "
            "as circuit-tracer's viewer JSON (no pickle) with our Gctx / RS / CS as JSON; "
            "optionally a PNG of the pruned graph and circuit-tracer's local viewer."
        ),
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--index", type=int, required=True, help="trace index in the run")
    p.add_argument(
        "--answer-token", type=int, default=0, help="answer token attributed (0 = the first)"
    )
    p.add_argument("--out", default=None, help="output folder (default: RUN/attribution/graphs)")
    p.add_argument("--png", default=None, help="also draw the pruned graph into this PNG")
    p.add_argument("--png-features", type=int, default=30, help="feature nodes drawn (30)")
    p.add_argument("--png-dpi", type=int, default=120, help="resolution of the PNG (120)")
    p.add_argument("--node-threshold", type=float, default=0.8, help="pruning (viewer, PNG)")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="pruning (viewer, PNG)")
    p.add_argument(
        "--serve",
        type=int,
        default=None,
        metavar="PORT",
        help="then serve circuit-tracer's own frontend on PORT; it loads d3, dagre and other "
        "scripts from the internet, so it needs a connection (offline: hallugraph view RUN)",
    )
    _add_graph_args(p)


def _settings(args: argparse.Namespace, targets: str = "first") -> Any:
    from hallugraph.attribution.run import AttributionSettings

    return AttributionSettings(
        max_feature_nodes=args.max_feature_nodes if args.max_feature_nodes > 0 else None,
        targets=targets,
        max_answer_tokens=getattr(args, "max_answer_tokens", None),
        batch_size=args.batch_size,
        dtype=args.dtype,
        engine=args.engine,
    )


def _need_circuit_tracer() -> None:
    from hallugraph.attribution.tracer import require_circuit_tracer

    try:
        require_circuit_tracer()
    except ImportError as err:
        raise ValueError(str(err)) from err


def run_groundedness(args: argparse.Namespace) -> int:
    """``hallugraph groundedness RUN``: score the run, print a JSON summary."""
    import json
    from pathlib import Path

    import torch

    from hallugraph.attribution.run import score_run

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        from hallugraph.attribution.run import merge_shards

        print(json.dumps({"merged": merge_shards(args.run, args.merge)}))
        return 0
    shard = None
    if args.shard:
        try:
            shard = tuple(int(v) for v in args.shard.split("/"))
            assert len(shard) == 2
        except (ValueError, AssertionError):
            raise ValueError(f"--shard {args.shard!r}: expected K/N, e.g. 0/2") from None
    settings = _settings(args, args.targets)
    first = None
    if args.first:
        first = json.loads(Path(args.first).read_text())
        if not isinstance(first, list) or not all(isinstance(q, str) for q in first):
            raise ValueError(f"--first {args.first}: expected a JSON list of trace ids")
    try:
        summary = score_run(
            args.run,
            args.transcoders,
            settings,
            model=args.model,
            device=args.device,
            limit=args.limit,
            shard=shard,
            first=first,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            log_fn=print,
            shared_prefixes=False if args.separate_prefixes else None,
        )
    except ImportError as err:  # circuit-tracer missing
        raise ValueError(str(err)) from err
    for qid, err in summary.failed[:10]:
        print(f"failed: {qid}: {err}")
    print(json.dumps(summary.to_dict()))
    return 1 if summary.failed and not summary.scored and not summary.already else 0


def run_attribution(args: argparse.Namespace) -> int:
    """``hallugraph attribution RUN --index I``: one graph, written (and served)."""
    import time
    from pathlib import Path

    import torch

    from hallugraph.attribution.run import load_for_run, resolve_transcoders
    from hallugraph.attribution.viewer import (
        attribute_trace,
        draw_attribution_graph,
        graph_slug,
        serve_viewer,
        write_viewer_files,
    )
    from hallugraph.store import TraceStore

    if args.threads:
        torch.set_num_threads(args.threads)
    store = TraceStore(args.run)
    if not -len(store) <= args.index < len(store):
        raise ValueError(f"--index {args.index} out of range: {args.run} has {len(store)} traces")
    row = store.get(args.index % len(store), fields=())
    if not row.get("context_span"):
        raise ValueError(f"trace {args.index} of {args.run} has no context span (Gctx needs one)")
    settings = _settings(args)
    tdir = resolve_transcoders(args.transcoders, str(store.info.get("model", "")))
    if settings.engine == "circuit-tracer" or args.serve is not None:
        _need_circuit_tracer()
    t0 = time.perf_counter()
    rm = load_for_run(
        store,
        tdir,
        model=args.model,
        device=args.device,
        dtype=settings.dtype,
        engine=settings.engine,
    )
    print(f"{settings.engine} model loaded in {time.perf_counter() - t0:.1f} s")
    graph, info = attribute_trace(rm, row, args.answer_token, settings)
    info["transcoders"] = str(tdir)
    out = Path(args.out) if args.out else store.dir / "attribution" / "graphs"
    slug = graph_slug(row["question_id"], args.answer_token)
    files = write_viewer_files(
        graph,
        out,
        slug,
        info,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
    )
    s = info["scores"]
    print(
        f"trace {row['question_id']} (label {row.get('label')}), target "
        f"{info['target']['token']!r} p={info['target']['prob']:.3f}: Gctx {s['gctx']:.4f}, "
        f"RS {s['rs']:.4f}, CS {s['cs']:.4f}, {s['n_features']} features, "
        f"{info['seconds']:.1f} s"
    )
    if args.png:
        n = len(graph.input_tokens)
        strings = row["tokens_decoded"][: n - info["bos_shift"]]
        strings = [rm.tokenizer.decode([int(graph.input_tokens[0])])] * info["bos_shift"] + strings
        files.append(
            draw_attribution_graph(
                graph,
                args.png,
                token_strings=strings,
                context=info["context_positions"],
                answer=info["answer_positions"],
                node_threshold=args.node_threshold,
                edge_threshold=args.edge_threshold,
                max_features=args.png_features,
                dpi=args.png_dpi,
                title=(
                    f"{row['question_id']} (label {row.get('label')}) -> "
                    f"{info['target']['token']!r}: Gctx {s['gctx']:.3f}, RS {s['rs']:.3f}, "
                    f"CS {s['cs']:.3f}"
                ),
            )
        )
    if not any(f.name == f"{slug}.json" for f in files):
        print("viewer JSON not written: it needs circuit-tracer (pip install -e '.[attribution]')")
    for f in files:
        print(f)
    if args.serve is not None:
        print(
            "note: circuit-tracer's frontend loads its scripts from the internet; without a "
            "connection the page is blank. Offline: hallugraph view RUN",
            file=sys.stderr,
        )
        server = serve_viewer(out, args.serve)
        print(f"viewer: http://localhost:{args.serve}/index.html?slug={slug} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0

"""Command line: ``hallugraph {extract,merge,info,verify,label,stats,evaluate,graph,hypothesis,
transcoders,groundedness,attribution,run}`` (also ``python -m hallugraph``).

Exit codes: 0 success; 1 the command ran but produced no result (every example failed, a
detector failed on every run, a run failed ``verify``); 2 bad input or a damaged run (the
message names the file or the argument); 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from hallugraph.cli.commands import (
    cmd_evaluate,
    cmd_extract,
    cmd_graph,
    cmd_hypothesis,
    cmd_info,
    cmd_label,
    cmd_merge,
    cmd_run,
    cmd_stats,
    cmd_verify,
)
from hallugraph.cli.parser import build_parser


def entry() -> None:
    """The ``hallugraph`` command and ``python -m hallugraph``: :func:`main` on the command
    line, allowed to restart itself once for a bounded heap."""
    raise SystemExit(main(restart=True))


def main(argv: Sequence[str] | None = None, *, restart: bool = False) -> int:
    """Run one command (``argv``, else the command line); its exit code. ``restart``: an
    extraction (``extract`` / ``run`` / ``merge``) may replace this process by the same
    command started with glibc's mmap threshold fixed (:func:`hallugraph.config.
    restart_with_bounded_heap`; docs/EXTRACTION.md, "Units of work")."""
    args = build_parser().parse_args(argv)
    if args.command in ("extract", "run", "merge"):
        from hallugraph.config import bound_heap, restart_with_bounded_heap

        try:
            if restart and argv is None:
                restart_with_bounded_heap()
            bound_heap()  # where no restart happened: from here on
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    from hallugraph.data import DatasetError
    from hallugraph.models import ModelError
    from hallugraph.store import StoreError

    try:
        if getattr(args, "scoring", None):  # train / score / serve
            return args.scoring(args)
        if args.command == "extract":
            from hallugraph.data import parse_columns

            columns = parse_columns(args.columns) if args.columns else None
            return cmd_extract(args, args.dataset, args.out, columns)
        if args.command == "merge":
            return cmd_merge(args.run)
        if args.command == "info":
            return cmd_info(args.run)
        if args.command == "verify":
            return cmd_verify(args.runs)
        if args.command == "label":
            return cmd_label(args.runs, args.method, args.spot_check)
        if args.command == "stats":
            return cmd_stats(args.runs, args.prune, not args.no_progress)
        if args.command == "evaluate":
            return cmd_evaluate(args, args.runs, args.out)
        if args.command == "graph":
            return cmd_graph(args)
        if args.command == "hypothesis":
            return cmd_hypothesis(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "transcoders":
            from hallugraph.attribution.cli import run_transcoders

            return run_transcoders(args)
        if args.command == "groundedness":
            from hallugraph.attribution.cli import run_groundedness

            return run_groundedness(args)
        if args.command == "groundedness-eval":
            from hallugraph.attribution.benchmark_cli import run_groundedness_eval

            return run_groundedness_eval(args)
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
        if args.command in ("groundedness", "attribution", "groundedness-eval"):
            # circuit-tracer / nnsight leave native threads behind that abort the interpreter's
            # shutdown ("terminate called without an active exception"); everything is on disk
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    return 0

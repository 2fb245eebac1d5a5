"""``hallugraph view RUN [RUN ...]``: serve the offline viewer (extra ``serve``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_view_parser(sub: Any) -> None:
    """Register ``view`` on the main parser's subparsers."""
    p = sub.add_parser(
        "view",
        help="browse runs, traces, attention and attribution graphs in a local web app",
        description=(
            "A local web app (no internet needed: every script ships in the package) showing "
            "each run's summary and evaluation (detector table, ROC curves), its traces "
            "(tokens by role and per-token signal), attention graphs per layer and attribution "
            "graphs. Needs the `serve` extra: pip install 'hallugraph[serve]'."
        ),
    )
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    p.add_argument("--port", type=int, default=8050, help="port (default: %(default)s)")
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="DIR",
        help="an `evaluate` output folder (default: RUN/../eval and RUN/eval when present)",
    )
    p.add_argument(
        "--graphs",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of attribution graph JSON (default: RUN/attribution/graphs)",
    )
    p.set_defaults(view_func=run_view)


def run_view(args: argparse.Namespace) -> int:
    """Dispatch ``hallugraph view``: open the runs (clear error on a bad one), then serve."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise ValueError(
            f"`hallugraph view` needs the `serve` extra ({err.name} is missing): "
            "pip install 'hallugraph[serve]' (fastapi + uvicorn)"
        ) from err
    from hallugraph.viewer.app import create_app
    from hallugraph.viewer.data import load_runs

    runs = load_runs(args.runs, args.eval, args.graphs)
    app = create_app(runs)
    print(f"hallugraph view: http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

"""What fitting a detector costs: wall time and peak memory, against Lookback Lens.

For every run and every named detector (default: all registered), a fresh Python process loads
the run's :class:`~hallugraph.features.FeatureTable` and the statistics the detector reads (from
the cache beside the run; computed and cached first when missing), records ``ru_maxrss``, fits
the detector on every labeled trace of the run, then predicts them. It reports:

* ``fit_s`` / ``predict_s``: wall time of ``fit`` / ``predict_proba``;
* ``peak_mb``: ``ru_maxrss`` after fitting minus ``ru_maxrss`` after loading the table and its
  statistics (the peak the fit adds, libraries it imports included: e.g. torch and PyTorch
  Geometric for CHARM). ``ru_maxrss`` is a high-water mark, so a fit that stays under the
  loading peak reads 0;
* ratios against the logistic-regression ``lookback_lens`` baseline, always run first in the
  same invocation (one subprocess per detector, so neither pays for the other's imports);
  memory ratios floor both sides at 1 MB (the baseline's fit adds next to nothing).

    .venv/bin/python benchmarks/detector_cost.py runs/bench/triviaqa --detectors charm,lapeigvals

A run must be labeled (``hallugraph label RUN``). ``--threads`` sets torch's thread count in the
children (default: torch's own choice).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

BASELINE = "lookback_lens"


def _maxrss_mb() -> float:
    # Linux reports kilobytes (macOS bytes)
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def child(run: str, name: str, threads: int | None) -> dict:
    """Fit one detector on one run in this process; the measurements as a dict."""
    import numpy as np

    from hallugraph.detectors import get_detector
    from hallugraph.features import FeatureTable

    if threads:
        import torch

        torch.set_num_threads(threads)
    out: dict = {"run": run, "detector": name}
    try:
        X = FeatureTable.from_run(run)
        y = X.labels
        det = get_detector(name)
        for s in det.stats:
            X.stat(s)
        out["n"] = len(X)
        out["pct_halluc"] = float(100 * np.mean(y)) if len(y) else float("nan")
        base = _maxrss_mb()
        t0 = time.perf_counter()
        det.fit(X, y)
        out["fit_s"] = time.perf_counter() - t0
        peak = _maxrss_mb()
        t0 = time.perf_counter()
        det.predict_proba(X)
        out["predict_s"] = time.perf_counter() - t0
        out["base_mb"], out["peak_mb"] = base, peak - base
    except Exception as err:  # noqa: BLE001 - report it, keep benchmarking the others
        out["error"] = f"{type(err).__name__}: {err}"
    return out


def _spawn(run: str, name: str, threads: int | None, timeout: float | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, run]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"run": run, "detector": name, "error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"run": run, "detector": name, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}


def _fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def report(rows: list[dict]) -> str:
    """Markdown table, one block per run, ratios against the baseline's row of that run."""
    head = (
        "| run | detector | n | fit s | x LBL | predict s | peak MB | x LBL | error |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for run in dict.fromkeys(r["run"] for r in rows):
        block = [r for r in rows if r["run"] == run]
        base = next((r for r in block if r["detector"] == BASELINE and "error" not in r), None)
        for r in block:
            fr = mr = None
            if base and "fit_s" in r:
                fr = r["fit_s"] / max(base["fit_s"], 1e-9)
                mr = max(r["peak_mb"], 1.0) / max(base["peak_mb"], 1.0)  # floor: LR adds ~0
            label = os.path.basename(os.path.normpath(run))
            lines.append(
                f"| {label} | {r['detector']} | {r.get('n', '-')} "
                f"| {_fmt(r.get('fit_s'))} | {_fmt(fr, 1)} | {_fmt(r.get('predict_s'))} "
                f"| {_fmt(r.get('peak_mb'), 0)} | {_fmt(mr, 1)} | {r.get('error', '')} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", metavar="RUN", help="labeled run directories")
    ap.add_argument("--detectors", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the children")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per detector fit")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child(args.runs[0], args.child, args.threads)), flush=True)
        return

    from hallugraph.detectors import all_detectors

    known = all_detectors()
    names = list(known) if args.detectors is None else [d for d in args.detectors.split(",") if d]
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown detectors {unknown}; known: {', '.join(sorted(known))}")
    names = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    rows = []
    for run in args.runs:
        for name in names:
            r = _spawn(run, name, args.threads, args.timeout)
            print(
                f"{run} {name}: fit {_fmt(r.get('fit_s'))} s, peak +{_fmt(r.get('peak_mb'), 0)} MB"
                + (f"  ERROR {r['error']}" if "error" in r else ""),
                file=sys.stderr,
                flush=True,
            )
            rows.append(r)
    print(report(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()

"""How a detector's fit cost grows with the number of answers it is fitted on, and what the
benchmark table costs at that rate.

For each detector, fits on grouped random subsets of a labeled run (``--sizes``) and, beyond
the run's size, on the run's rows repeated (``--replicate``: row ``i`` taken ``m`` times, so a
300-answer run gives a 2,400-row table; the arithmetic of a fit grows as on real rows, the
number of solver iterations or epochs may not, so treat those points as the *shape* of the
curve, not as the real cost), one process, one BLAS and torch thread (as the evaluation's
cells), statistics loaded before the clock. CPU seconds (``time.process_time``) of ``fit`` and
of scoring the same rows. Then, per detector, the fit's CPU against n (straight lines between
the points in log-log; beyond the largest, the last segment's slope, at least 1) and the
table's cost from it (scoring: the largest CPU per row measured): every fit of ``make
benchmark-table`` (4 runs: TriviaQA 5,000, TruthfulQA 817, HaluEval-QA 1,500 teacher-forced and
500 generated; 5 folds x 3 repeats fitted on 0.8 x 0.75 of a run and scoring 0.4 of it;
transfer fitted on each whole run; leave-one-dataset-out fitted on the other runs without the
500 questions the two HaluEval runs share).

    nice -n 5 .venv/bin/python benchmarks/fit_cost.py runs/bench/triviaqa --sizes 60,120,240 \\
        --detectors 'lapeigvals;fusion@bases_fit=refit' --replicate 2,4,8 --json cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np

RUNS = {"triviaqa": 5000, "truthfulqa": 817, "halueval_qa_tf": 1500, "halueval_qa": 500}
SHARED = {"halueval_qa_tf": 500, "halueval_qa": 1500}
"""Rows of the other HaluEval run left out of a leave-one-dataset-out fit (shared questions)."""


def table_fits() -> list[tuple[int, int]]:
    """``(answers fitted, answers scored)`` of every fit of the benchmark table."""
    total = sum(RUNS.values())
    fits = []
    for name, n in RUNS.items():
        fits += [(round(0.6 * n), round(0.4 * n))] * 15  # 5 folds x 3 repeats
        fits.append((n, total - n))  # transfer: fitted on the run, scored on the others
        fits.append((total - n - SHARED.get(name, 0), n))  # leave-one-dataset-out
    return fits


def cost_curve(ns: list[float], cpu: list[float]) -> tuple[Callable[[float], float], float]:
    """``cpu(n)``: straight lines between the measured points in log-log (the median where a
    size was measured twice), beyond the largest one the last segment's slope, at least 1 (a
    fit does not grow slower than its data: conservative); and that end slope."""
    pts: dict[float, list[float]] = {}
    for n, c in zip(ns, cpu, strict=True):
        pts.setdefault(float(n), []).append(max(float(c), 1e-6))
    x = np.log(sorted(pts))
    yv = np.log([float(np.median(pts[n])) for n in sorted(pts)])
    end = 1.0 if len(x) < 2 else max(1.0, float((yv[-1] - yv[-2]) / (x[-1] - x[-2])))

    def f(n: float) -> float:
        ln = np.log(n)
        if ln <= x[-1]:
            return float(np.exp(np.interp(ln, x, yv)))
        return float(np.exp(yv[-1] + end * (ln - x[-1])))

    return f, end


def subset(groups: np.ndarray, y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About ``n`` rows: whole questions in a random order until ``n`` is reached."""
    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(groups))
    out: list[int] = []
    for g in uniq:
        out += np.flatnonzero(groups == g).tolist()
        if len(out) >= n:
            break
    return np.sort(np.asarray(out[:n]))


def measure(run: str, names: list[str], sizes: list[int], reps: list[int], seed: int) -> list[dict]:
    from hallugraph.detectors import get_detector
    from hallugraph.evaluation.cells import seed_globals, single_threaded
    from hallugraph.features import FeatureTable

    X = FeatureTable.from_run(run)
    y, groups = X.labels, X.groups
    rows = []
    for name in names:
        base, _, spec = name.partition("@")  # "fusion@bases_fit=refit,inner_folds=3"
        params = {}
        for kv in filter(None, spec.split(",")):
            k, v = kv.split("=")
            params[k] = int(v) if v.isdigit() else v
        if "seed" in get_detector(base).get_params():
            params["seed"] = seed
        for s in get_detector(base, **params).stats_read():
            X.stat(s)
        plan = [("subset", subset(groups, y, n, seed)) for n in sizes if n <= len(y)]
        plan += [("replicate", np.repeat(np.arange(len(y)), m)) for m in reps]
        for kind, idx in plan:
            seed_globals(seed)
            det = get_detector(base, **params)
            with single_threaded():
                c0 = time.process_time()
                try:
                    det.fit(X[idx], y[idx])
                    fit = time.process_time() - c0
                    c0 = time.process_time()
                    det.predict_proba(X[idx])
                    pred = time.process_time() - c0
                    err = ""
                except Exception as e:  # noqa: BLE001 - report it, measure the others
                    fit, pred, err = float("nan"), float("nan"), f"{type(e).__name__}: {e}"
            row = {"detector": name, "kind": kind, "n": int(len(idx)), "fit_cpu_s": fit,
                   "predict_cpu_s": pred, "error": err}  # fmt: skip
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def extrapolate(rows: list[dict]) -> list[dict]:
    """Per detector: the fit's CPU curve against n, and the table's CPU h."""
    out = []
    fits = table_fits()
    for name in dict.fromkeys(r["detector"] for r in rows):
        ok = [r for r in rows if r["detector"] == name and not r["error"]]
        if not ok:
            continue
        ns = [r["n"] for r in ok]
        f, b = cost_curve(ns, [r["fit_cpu_s"] for r in ok])
        per_row = float(max(r["predict_cpu_s"] / r["n"] for r in ok))
        fit_s = sum(f(n) for n, _ in fits)
        pred_s = sum(per_row * m for _, m in fits)
        out.append({"detector": name, "end_slope": b, "fit_cpu_s_3000": f(3000),
                    "predict_cpu_s_per_row": per_row, "table_fit_cpu_h": fit_s / 3600,
                    "table_predict_cpu_h": pred_s / 3600,
                    "table_cpu_h": (fit_s + pred_s) / 3600})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", help="a labeled run")
    ap.add_argument("--detectors", default="", help="names separated by ';' (name@param=value,...)")
    ap.add_argument("--sizes", default="60,120,240", help="subset sizes (answers)")
    ap.add_argument("--replicate", default="", help="row multiplicities beyond the run (2,4,8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the points and the extrapolation here")
    ap.add_argument("--from-json", action="store_true", help="RUN is a --json file: re-extrapolate")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    reps = [int(s) for s in args.replicate.split(",") if s]
    if args.from_json:
        with open(args.run) as fh:
            rows = json.load(fh)["points"]
    else:
        rows = measure(args.run, args.detectors.split(";"), sizes, reps, args.seed)
    ext = extrapolate(rows)
    print("| detector | end slope | fit CPU s at n=3000 | table CPU h |\n|---|---:|---:|---:|")
    for e in ext:
        print(f"| {e['detector']} | {e['end_slope']:.2f} | {e['fit_cpu_s_3000']:.1f} "
              f"| {e['table_cpu_h']:.3f} |")  # fmt: skip
    print(f"| all | | | {sum(e['table_cpu_h'] for e in ext):.2f} |")
    if args.json:
        from hallugraph.io import atomic_write_json

        atomic_write_json(args.json, {"points": rows, "extrapolation": ext,
                                      "table_fits": table_fits()})  # fmt: skip


if __name__ == "__main__":
    main()

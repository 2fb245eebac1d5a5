"""What one CHARM cross-validation cell costs at one thread: the evaluation's fold (repeat 0,
fold 0 of ``--folds``; the detector fitted on the fold's inner training answers, scored on its
validation and test answers), CPU seconds of ``fit`` and of the scoring, each seed's epochs and
best epoch, the test AUROC; the test scores written to ``--out`` (JSON) so that two versions of
the code can be compared answer for answer.

    nice -n 5 .venv/bin/python benchmarks/charm_cell_cost.py runs/bench/triviaqa --folds 2 \\
        --out /tmp/charm_cell.json

One torch thread and one BLAS thread, as the evaluation's cells (``single_threaded``); the
statistics are read and PyTorch Geometric imported before the clock starts. CPU seconds
(``time.process_time``), so a loaded machine inflates the wall time far more than them.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a labeled run with the CHARM statistics cached")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file for the numbers and the test scores")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from hallugraph.detectors import get_detector
    from hallugraph.detectors.charm_net import charm_model_class
    from hallugraph.evaluation.cells import single_threaded
    from hallugraph.evaluation.cv import load_runs

    run = load_runs([args.run], seed=args.seed, n_folds=args.folds, n_repeats=1, n_boot=10,
                    warnings=[])[0]  # fmt: skip
    fit_idx, val_idx = run.inner[(0, 0)]
    te = run.folds[0][3]
    for part in (fit_idx, val_idx, te):
        run.table[part].stat("charm_nodes"), run.table[part].stat("charm_graph")
    charm_model_class()
    det = get_detector("charm", seed=args.seed)
    with single_threaded():
        c0, t0 = time.process_time(), time.perf_counter()
        det.fit(run.table[fit_idx], run.y[fit_idx])
        fit_cpu, fit_wall = time.process_time() - c0, time.perf_counter() - t0
        c0 = time.process_time()
        det.predict_proba(run.table[val_idx])
        s_te = np.asarray(det.predict_proba(run.table[te]))
        predict_cpu = time.process_time() - c0
    out = {
        "run": args.run,
        "n_fit": int(len(fit_idx)),
        "n_scored": int(len(val_idx) + len(te)),
        "fit_cpu_s": fit_cpu,
        "fit_wall_s": fit_wall,
        "predict_cpu_s": predict_cpu,
        "fit_cpu_s_per_answer": fit_cpu / len(fit_idx),
        "predict_cpu_ms_per_answer": 1000 * predict_cpu / (len(val_idx) + len(te)),
        "history": det.history_,
        "auroc_test": float(roc_auc_score(run.y[te], s_te)),
    }
    print(json.dumps(out, indent=1))
    if args.out:
        from hallugraph.io import atomic_write_json

        atomic_write_json(args.out, {**out, "scores_test": s_te.tolist()})


if __name__ == "__main__":
    main()

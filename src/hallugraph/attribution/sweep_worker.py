"""The node-budget × target-mode sweep of ``hallugraph groundedness-eval`` (one worker process
per shard: ``python -m hallugraph.attribution.sweep_worker OUT --shard K/N --settings
64:first,...``) and its table.

A worker loads the model and the transcoder set once, then scores its share (every N-th from
the K-th) of the sweep answers (``OUT/sweep/ids.json``) with every setting, cheapest first,
into ``OUT/sweep/shard-K-of-N.json`` (replaced atomically after every answer: resumable). Each
record is :func:`~hallugraph.attribution.run.score_trace`'s plus ``cpu_s``, the worker's CPU
seconds for that answer (``time.process_time``; wall seconds on a shared machine mostly measure
the other jobs).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def setting_key(nodes: int, targets: str) -> str:
    return f"n{nodes}_{targets}"


def shard_path(out: Path, k: int, n: int) -> Path:
    return out / "sweep" / f"shard-{k}-of-{n}.json"


def load_sweep(
    out: str | Path, n: int, part: str = "scores"
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{setting key: {answer id: record}}`` over the ``n`` shard files: ``part="scores"``
    (every sweep answer, smaller budgets from prefix graphs) or ``"timing"`` (separate runs at
    the smaller budgets on a few answers)."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for k in range(n):
        path = shard_path(Path(out), k, n)
        if not path.is_file():
            continue
        for key, recs in json.loads(path.read_text()).get(part, {}).items():
            merged.setdefault(key, {}).update(recs)
    return merged


def _f(v: Any) -> float:
    return float("nan") if v is None else float(v)


def sweep_table(
    scores: Mapping[str, Mapping[str, Mapping[str, Any]]],
    ids: Sequence[str],
    table: Mapping[str, np.ndarray],
    timing: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """One row per setting: answers scored, AUROC of Groundedness (α chosen on these same
    answers: all validation) and of Gctx alone, mean wall / CPU seconds per answer. AUROC is
    ``None`` until every sweep answer is scored with that setting.

    A setting scored from prefix graphs takes its seconds from its separate ``timing`` runs
    (``timed`` answers), and ``prefix_max_diff`` is the largest |difference| of Gctx, RS, CS
    between those runs and the prefix graphs of the same answers (0 up to rounding)."""
    timing = timing or {}
    from hallugraph.detectors.groundedness import fit_groundedness
    from hallugraph.metrics import roc_auc

    label = dict(zip(table["id"].tolist(), table["label"].tolist(), strict=True))
    rows = []
    for key, recs in scores.items():
        nodes, targets = key[1:].split("_", 1)
        done = [i for i in ids if i in recs]
        row: dict[str, Any] = {"nodes": int(nodes), "targets": targets, "answers": len(done)}
        v = np.array([[_f(recs[i][c]) for c in ("gctx", "rs", "cs")] for i in done]).reshape(-1, 3)
        y = np.array([label[i] for i in done], dtype=np.int64)
        complete = len(done) == len(ids) and len(set(y.tolist())) == 2
        auroc = auroc_gctx = alpha = None
        if complete:
            fit = fit_groundedness(v[:, 0], v[:, 1], v[:, 2], y)
            g = np.nan_to_num(np.asarray(fit.score(v[:, 0], v[:, 1], v[:, 2])), nan=0.0)
            auroc, alpha = round(float(roc_auc(y, -g)), 4), fit.alpha
            auroc_gctx = round(float(roc_auc(y, -np.nan_to_num(v[:, 0], nan=0.0))), 4)
        timed = timing.get(key, {})
        src = timed if timed else {i: recs[i] for i in done}
        wall = [_f(r["seconds"]) for r in src.values()]
        cpu = [_f(r.get("cpu_s")) for r in src.values()]
        diffs = [
            abs(_f(timed[i][c]) - _f(recs[i][c]))
            for i in timed
            if i in recs
            for c in ("gctx", "rs", "cs")
        ]
        row.update(
            auroc=auroc,
            auroc_gctx=auroc_gctx,
            alpha=alpha,
            wall_s_per_answer=round(float(np.mean(wall)), 2) if wall else None,
            cpu_s_per_answer=(round(float(np.nanmean(cpu)), 2) if np.isfinite(cpu).any() else None),
            timed=len(src),
            prefix_max_diff=float(np.nanmax(diffs)) if diffs else None,
        )
        rows.append(row)
    rows.sort(key=lambda r: (r["targets"] != "first", r["nodes"]))
    return rows


def run_worker(args: argparse.Namespace) -> int:
    import torch

    from hallugraph.attribution.run import score_trace, score_trace_budgets
    from hallugraph.attribution.settings import (
        AttributionSettings,
        load_for_run,
        resolve_transcoders,
        transcoders_digest,
    )
    from hallugraph.io import atomic_write_json
    from hallugraph.store import TraceStore

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    k, n = (int(v) for v in args.shard.split("/"))
    ids = json.loads((out / "sweep" / "ids.json").read_text())[k::n]
    store = TraceStore(out / "halueval_qa_tf")
    rows = {r["question_id"]: r for r in store.manifest}
    tdir = resolve_transcoders(args.transcoders, str(store.info.get("model", "")))
    meta = {"transcoders": str(tdir), "transcoders_digest": transcoders_digest(tdir)}
    path = shard_path(out, k, n)
    payload = json.loads(path.read_text()) if path.is_file() else {"settings": meta, "scores": {}}
    if payload["settings"] != meta:
        raise SystemExit(f"{path} was made with other transcoders: {payload['settings']}")
    settings: dict[str, list[int]] = {}
    for s in args.settings.split(","):
        nodes, targets = s.split(":")
        settings.setdefault(targets, []).append(int(nodes))
    scores = payload["scores"]
    timing = payload.setdefault("timing", {})
    todo = [
        (t, i)
        for t, budgets in settings.items()
        for i in ids
        if any(i not in scores.get(setting_key(b, t), {}) for b in budgets)
    ]
    # separate runs at the smaller budgets on the first answers: their cost, and a check that
    # the prefix graphs are those runs' graphs
    timed = [
        (b, t, i)
        for t, budgets in settings.items()
        for b in sorted(budgets)[:-1]
        for i in ids[: args.timing_answers]
        if i not in timing.get(setting_key(b, t), {})
    ]
    if not todo and not timed:
        return 0
    from tqdm.auto import tqdm

    engine = load_for_run(store, tdir, model=args.model, device="cpu")
    bar = tqdm(total=len(todo) + len(timed), desc=f"sweep {k}/{n}", disable=args.no_progress)
    for targets, i in todo:
        budgets = sorted(settings[targets])
        st = AttributionSettings(targets=targets, max_answer_tokens=args.max_answer_tokens)
        c0 = time.process_time()
        recs = score_trace_budgets(engine, rows[i], st, budgets)
        cpu = round(time.process_time() - c0, 3)
        for b, rec in recs.items():
            rec["cpu_s"] = cpu if b == budgets[-1] else None
            rec["from_nodes"] = budgets[-1]
            scores.setdefault(setting_key(b, targets), {})[i] = rec
        atomic_write_json(path, payload, indent=None)
        bar.update()
    for nodes, targets, i in timed:
        st = AttributionSettings(
            max_feature_nodes=nodes, targets=targets, max_answer_tokens=args.max_answer_tokens
        )
        c0 = time.process_time()
        rec = score_trace(engine, rows[i], st)
        rec["cpu_s"] = round(time.process_time() - c0, 3)
        timing.setdefault(setting_key(nodes, targets), {})[i] = rec
        atomic_write_json(path, payload, indent=None)
        bar.update()
    bar.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hallugraph.attribution.sweep_worker")
    p.add_argument("out")
    p.add_argument("--shard", default="0/1")
    p.add_argument("--transcoders", required=True)
    p.add_argument("--settings", required=True, help="NODES:TARGETS,... e.g. 32:first,64:all")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the run's model)")
    p.add_argument("--max-answer-tokens", type=int, default=None)
    p.add_argument(
        "--timing-answers",
        type=int,
        default=5,
        help="answers of this shard also run separately at each smaller budget (its cost)",
    )
    p.add_argument("--no-progress", action="store_true")
    return run_worker(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

"""``targets=all`` Groundedness scoring: the shared path (one attribution for every answer token,
:func:`hallugraph.attribution.prefix_scores.shared_scores`) against the separate one (one
attribution per answer token, ``score_trace`` as the evaluation has run it), on the same
answers, model and transcoders, in one process, alternating per answer.

For each answer: CPU seconds (``time.process_time``; the steadier measure on a shared machine)
of the separate path with the dense scorer (what ``score_trace`` does), of its scoring alone
with the dense and the row-sparse scorer, and of the shared path; the per-answer Gctx / RS / CS
(means over the answer's graphs, as stored) of both paths and their largest |Δ|; per graph
whether the selected features are the same (compared as (layer, position, feature id), so a
shifted index is not a swap), how many differ, and the difference in active features. One JSON
line per answer (also written to ``--out``), a summary, and as the last line::

    answers=<n> seconds_old=<a> seconds_new=<b> ratio=<a/b> max_abs_diff=<d>

with ``seconds_*`` the CPU seconds summed over the answers and ``max_abs_diff`` the largest
|Δ| of the per-answer Gctx, RS and CS. Answers are the run's traces with a context and at least
two answer tokens, every ``--stride``-th from ``--start`` (the shared path of a one-token answer
is the separate one).

    python benchmarks/groundedness_all_speed.py runs/groundedness/halueval_qa_tf \\
        --transcoders ~/.cache/hallugraph/transcoders/smollm2_135M/smollm2-135m-2h-v2 \\
        --answers 12 --out runs/speed13/all_speed.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from hallugraph.attribution.prefix_scores import shared_graphs
from hallugraph.attribution.run import answer_offsets, attribute_answer_token
from hallugraph.attribution.run import context_rows as run_context_rows
from hallugraph.attribution.scores import scores_from_graph, trace_record
from hallugraph.attribution.settings import load_for_run, resolve_transcoders
from hallugraph.config import cpu_name
from hallugraph.io import atomic_write_text
from hallugraph.store import TraceStore

FIELDS = ("gctx", "rs", "cs")


def _triples(graph: Any) -> set[tuple[int, int, int]]:
    sel = graph.active_features[graph.selected_features]
    return {tuple(int(v) for v in r) for r in sel.tolist()}


def compare_answer(engine: Any, row: dict, nodes: int, max_tokens: int, batch: int) -> dict:
    """One answer through both paths (see the module docstring)."""
    ks = answer_offsets(row, "all", max_tokens)
    cpu0 = time.process_time()
    old_graphs, dense, sparse, t_dense, t_sparse = [], [], [], 0.0, 0.0
    for k in ks:
        graph, ctx, _ = attribute_answer_token(
            engine, row, k, max_feature_nodes=nodes, batch_size=batch
        )
        c = time.process_time()
        dense.append(scores_from_graph(graph, ctx))
        t_dense += time.process_time() - c
        c = time.process_time()
        sparse.append(scores_from_graph(graph, ctx, sparse=True))
        t_sparse += time.process_time() - c
        old_graphs.append((_triples(graph), len(graph.active_features), graph))
    cpu_old = time.process_time() - cpu0 - t_sparse
    probs = [float(g.logit_probabilities[0]) for _, _, g in old_graphs]
    old = trace_record(row, dense, probs, 0.0)
    old_sparse = trace_record(row, sparse, probs, 0.0)
    cpu0 = time.process_time()
    graphs, ctx = shared_graphs(engine, row, ks, max_feature_nodes=nodes, batch_size=batch)
    new_scores = [scores_from_graph(g, ctx, sparse=True) for g in graphs]
    cpu_new = time.process_time() - cpu0
    new = trace_record(row, new_scores, [float(g.logit_probabilities[0]) for g in graphs], 0.0)
    per_graph = []
    for (trip, n_act, og), g, so, sn in zip(old_graphs, graphs, dense, new_scores, strict=True):
        swapped = len(trip - _triples(g))
        per_graph.append(
            {
                "n_pos": g.n_pos,
                "same_selected": swapped == 0,
                "swapped": swapped,
                "active_diff": len(g.active_features) - n_act,
                "prob_diff": abs(float(og.logit_probabilities[0] - g.logit_probabilities[0])),
                "max_abs_diff": max(abs(getattr(so, f) - getattr(sn, f)) for f in FIELDS),
            }
        )
    return {
        "id": row["question_id"],
        "graphs": len(ks),
        "prompt_len": int(row["prompt_len"]),
        "cpu_old": round(cpu_old, 3),
        "cpu_new": round(cpu_new, 3),
        "cpu_scoring_dense": round(t_dense, 3),
        "cpu_scoring_sparse": round(t_sparse, 3),
        **{f"old_{f}": old[f] for f in FIELDS},
        **{f"new_{f}": new[f] for f in FIELDS},
        "max_abs_diff": max(abs(old[f] - new[f]) for f in FIELDS),
        "sparse_scorer_diff": max(abs(old[f] - old_sparse[f]) for f in FIELDS),
        "per_graph": per_graph,
    }


def pick_rows(store: TraceStore, start: int, stride: int, n: int, max_tokens: int) -> list[dict]:
    rows = [r for r in run_context_rows(store) if len(answer_offsets(r, "all", max_tokens)) > 1]
    return rows[start::stride][:n]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a run with context spans (read only)")
    ap.add_argument("--transcoders", default=None, help="transcoder set (default: the model's)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the run's)")
    ap.add_argument("--answers", type=int, default=12)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--stride", type=int, default=29)
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--max-answer-tokens", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON lines of the per-answer results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = TraceStore(args.run)
    rows = pick_rows(store, args.start, args.stride, args.answers, args.max_answer_tokens)
    if not rows:
        raise SystemExit(f"{args.run}: no trace with a context and two answer tokens")
    tdir = resolve_transcoders(args.transcoders, str(store.info.get("model", "")))
    engine = load_for_run(store, tdir, model=args.model, device="cpu")
    attribute_answer_token(engine, rows[0], 0, max_feature_nodes=args.nodes)  # warm-up
    results = []
    for row in rows:
        res = compare_answer(engine, row, args.nodes, args.max_answer_tokens, args.batch_size)
        results.append(res)
        print(json.dumps(res), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in results))
    old = sum(r["cpu_old"] for r in results)
    new = sum(r["cpu_new"] for r in results)
    graphs = [g for r in results for g in r["per_graph"]]
    diff = max(r["max_abs_diff"] for r in results)
    print(
        f"CPU: {cpu_name()}, {args.threads} thread(s); {args.nodes} nodes, <= "
        f"{args.max_answer_tokens} answer tokens; {len(graphs)} graphs: "
        f"{sum(g['same_selected'] for g in graphs)} with the same selected features, "
        f"{sum(g['swapped'] for g in graphs)} features swapped, "
        f"{sum(g['active_diff'] != 0 for g in graphs)} with another active-feature count; "
        f"scoring dense {sum(r['cpu_scoring_dense'] for r in results):.1f} s, sparse "
        f"{sum(r['cpu_scoring_sparse'] for r in results):.1f} s (max |Δ| "
        f"{max(r['sparse_scorer_diff'] for r in results):.3g})"
    )
    print(
        f"answers={len(results)} seconds_old={old:.2f} seconds_new={new:.2f} "
        f"ratio={old / new:.3f} max_abs_diff={diff:.3g}"
    )
    return results


if __name__ == "__main__":
    main()

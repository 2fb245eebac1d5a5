"""hallugraph's attribution engine against circuit-tracer 0.5.0 (nnsight backend): seconds,
peak memory, and the largest difference of Gctx / RS / CS, on the same prompts, model and
transcoders, in one process.

The prompts are the HaluEval-QA training-side prompts closest to ``--prompt-tokens`` tokens
(as ``attribution_cost.py`` picks them), the attributed logit the first token of the reference
answer (what ``hallugraph groundedness`` attributes). The transcoders are a seeded random
JumpReLU set (``W_enc`` ~ N(0, 1/d), ``W_dec`` ~ N(0, 0.01/d), zero biases) whose per-layer
thresholds make ``--fire`` of the features fire on the first prompt (the MLP input's RMS grows
~4x through SmolLM2's layers, so one threshold would leave the first layers silent and the last
ones dense); ``--transcoders DIR`` uses a trained set instead. The comparison is about the
engines, not the transcoders.

For each budget of ``--nodes`` (increasing), the engine's seconds and the process's peak RSS so
far (``ru_maxrss``, in GiB; the engine runs first, circuit-tracer is loaded only after it), then
circuit-tracer at the budgets of ``--ct-nodes``. One JSON line per (prompt, budget), a Markdown
table, and as the last line, for the 64-node budget (else the smallest)::

    nodes=64 speedup=<ct s / engine s> max_score_diff=<max |Δ| of RS, CS, Gctx>
        engine_s=<s> engine_peak_gb=<GB>                                (one line)

At the circuit-tracer budgets the JSON also says whether both selected the same features and
the largest difference of the adjacency matrices, each row scaled by its largest |entry|.
Threads: 1 by default (on a shared 2-core machine two threads each were slower than one).
Besides wall seconds, CPU seconds (``time.process_time``) and their ratio ``cpu_speedup`` are
recorded: on a machine shared with other jobs they are the steadier measure. ``--batch-size``
(default 64) applies to both engines; at 64 nodes any batch size from 16 up gives the same
schedule (one ranking, then the 64 best features), so ``--batch-size 16`` lowers
circuit-tracer's memory (its forward runs the prompt ``batch_size`` times) without changing the
graph.

    python benchmarks/attribution_speed.py                      # 64, 256, 512; ct at 64
    python benchmarks/attribution_speed.py --nodes 64           # that budget alone
    python benchmarks/attribution_speed.py --nodes 7500 --ct-nodes ''

``--answers RUN --transcoders DIR`` instead times the engine alone on the first ``--examples``
answers of a run (CPU and wall seconds per answer at each of ``--nodes``; one answer from 7,500
nodes on). ``--keep-transcoders DIR`` writes the random set to ``DIR`` (for ``hallugraph
groundedness --transcoders DIR``); ``--compare RUN_A RUN_B`` instead prints, for the traces
scored in both runs' ``attribution/groundedness.json`` (e.g. one scored with each engine), the
largest |Δ| of Gctx / RS / CS and the mean seconds per trace of each.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from hallugraph.attribution.engine import AttributionEngine
from hallugraph.attribution.engine.model import frozen_forward
from hallugraph.attribution.scores import scores_from_graph
from hallugraph.attribution.tracer import attribution_tokens
from hallugraph.attribution.transcoders import write_transcoder_set
from hallugraph.config import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attribution_cost import closest_halueval_prompts  # noqa: E402


def calibrated_random_set(
    model: torch.nn.Module, tokens: torch.Tensor, width: int, out: Path, fire: float, seed: int
) -> Path:
    """The seeded random JumpReLU set described in the module docstring."""
    cache = frozen_forward(model, tokens)
    n_layers, _, d = cache.mlp_in.shape
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - fire)).item()
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(n_layers):
        rms = cache.mlp_in[i, 1:].pow(2).mean().sqrt().item()
        layers.append(
            {
                "W_enc": torch.randn(width, d, generator=g) * d**-0.5,
                "W_dec": torch.randn(width, d, generator=g) * 0.1 * d**-0.5,
                "b_enc": torch.zeros(width),
                "b_dec": torch.zeros(d),
                "activation_function.threshold": torch.full((width,), z * rms),
            }
        )
    return write_transcoder_set(out, layers, scan=f"random-jumprelu-w{width}-s{seed}")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _scores(graph, ctx) -> dict:
    s = scores_from_graph(graph, ctx)
    return {"gctx": s.gctx, "rs": s.rs, "cs": s.cs}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="64,256,512", help="engine budgets (max_feature_nodes)")
    ap.add_argument("--ct-nodes", default="64", help="circuit-tracer budgets ('' for none)")
    ap.add_argument("--model", default="smollm2_135M")
    ap.add_argument("--transcoders", default=None, help="a trained set instead of random")
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--fire", type=float, default=0.02, help="random set: fraction firing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-tokens", type=int, default=95)
    ap.add_argument("--examples", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    ap.add_argument("--keep-transcoders", default=None, help="write the random set here")
    ap.add_argument("--compare", nargs=2, metavar="RUN", help="compare two scored runs")
    ap.add_argument("--answers", metavar="RUN", help="time the engine on a run's answers")
    args = ap.parse_args(argv)
    if args.compare:
        return compare_runs(*args.compare)
    torch.set_num_threads(args.threads)
    if args.answers:
        return time_answers(args)
    from hallugraph.models import load_model

    budgets = sorted({int(x) for x in args.nodes.split(",") if x.strip()})
    ct_budgets = sorted({int(x) for x in args.ct_nodes.split(",") if x.strip()})
    lm = load_model(args.model, device="cpu", dtype="float32")
    cpu = cpu_name()
    prompts = []
    for p in closest_halueval_prompts(lm, args.prompt_tokens, args.examples):
        ids, shift = attribution_tokens(lm.tokenizer, p.prompt_ids)
        answer = p.example.references[0] if p.example.references else "yes"
        target = lm.tokenizer(answer, add_special_tokens=False)["input_ids"][0]
        ctx = [i + shift for i in range(*p.context_span)]
        prompts.append((p.example.id, ids, target, ctx))
    results: list[dict] = []
    graphs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(args.keep_transcoders) if args.keep_transcoders else Path(tmp) / "random"
        tdir = args.transcoders or calibrated_random_set(
            lm.model, prompts[0][1], args.width, keep, args.fire, args.seed
        )
        del lm
        t0 = time.perf_counter()
        engine = AttributionEngine.from_pretrained(_source(args.model), tdir)
        print(f"engine loaded in {time.perf_counter() - t0:.1f} s ({cpu})", flush=True)
        for qid, ids, target, ctx in prompts:
            for n in budgets:
                t0, c0 = time.perf_counter(), time.process_time()
                g = engine.attribute(
                    ids,
                    attribution_targets=[target],
                    max_feature_nodes=n,
                    batch_size=args.batch_size,
                )
                rec = {
                    "question_id": qid,
                    "n_pos": len(ids),
                    "nodes": n,
                    "active_features": int(g.active_features.shape[0]),
                    "engine_s": time.perf_counter() - t0,
                    "engine_cpu_s": time.process_time() - c0,
                    "engine_peak_gb": _peak_gb(),
                    **{f"engine_{k}": v for k, v in _scores(g, ctx).items()},
                }
                rec.update({f"t_{k}": v for k, v in engine.last_timings.items()})
                rec.update({f"cpu_{k}": v for k, v in engine.last_cpu_timings.items()})
                results.append(rec)
                if n in ct_budgets:
                    graphs[qid, n] = g
                del g
        if ct_budgets:
            from hallugraph.attribution.tracer import attribute_tokens, load_replacement_model

            rm = load_replacement_model(_source(args.model), tdir)
            for qid, ids, target, ctx in prompts:
                for n in ct_budgets:
                    t0, c0 = time.perf_counter(), time.process_time()
                    g = attribute_tokens(
                        rm,
                        ids,
                        max_feature_nodes=n,
                        batch_size=args.batch_size,
                        attribution_targets=torch.tensor([target]),
                    )
                    sec, cpu_s = time.perf_counter() - t0, time.process_time() - c0
                    sc = _scores(g, ctx)
                    for rec in results:
                        if rec["question_id"] == qid and rec["nodes"] == n:
                            rec["ct_s"], rec["ct_cpu_s"] = sec, cpu_s
                            rec["cpu_speedup"] = cpu_s / rec["engine_cpu_s"]
                            rec.update({f"ct_{k}": v for k, v in sc.items()})
                            rec["speedup"] = sec / rec["engine_s"]
                            rec["max_score_diff"] = max(
                                abs(rec[f"engine_{k}"] - sc[k]) for k in ("gctx", "rs", "cs")
                            )
                            rec.update(_compare(graphs.pop((qid, n)), g))
    lines = [json.dumps({k: _round(v) for k, v in r.items()}) for r in results]
    print("\n".join(lines))
    if args.out:
        from hallugraph.io import atomic_write_text

        atomic_write_text(args.out, "\n".join(lines) + "\n")
    _table(results, cpu, args.threads)
    pick = [r for r in results if r["nodes"] == 64] or [
        r for r in results if r["nodes"] == budgets[0]
    ]
    speed = [r["speedup"] for r in pick if "speedup" in r]
    diffs = [r["max_score_diff"] for r in pick if "max_score_diff" in r]
    print(
        f"nodes={pick[0]['nodes']} "
        f"speedup={_fmt(sum(speed) / len(speed) if speed else math.nan)} "
        f"max_score_diff={_fmt(max(diffs) if diffs else math.nan)} "
        f"engine_s={_fmt(sum(r['engine_s'] for r in pick) / len(pick))} "
        f"engine_peak_gb={_fmt(max(r['engine_peak_gb'] for r in pick))}"
    )
    return results


def time_answers(args: argparse.Namespace) -> list[dict]:
    """The engine's wall and CPU seconds per answer on the first ``--examples`` answers with a
    context of the run ``--answers`` (the graph ``hallugraph groundedness`` builds: the first
    answer token, actual token as the target), with ``--transcoders``, at each of ``--nodes``
    (at budget ``n``, at most ``--examples`` answers, and at most 1 from 7,500 nodes on)."""
    from hallugraph.attribution.run import attribute_answer_token, context_rows
    from hallugraph.store import TraceStore

    if not args.transcoders:
        raise SystemExit("--answers needs --transcoders DIR")
    store = TraceStore(args.answers)
    rows = context_rows(store)[: args.examples]
    engine = AttributionEngine.from_pretrained(_source(store.info["model"]), args.transcoders)
    results = []
    for n in sorted({int(x) for x in args.nodes.split(",") if x.strip()}):
        for row in rows[: 1 if n >= 7500 else None]:
            t0, c0 = time.perf_counter(), time.process_time()
            g, ctx, _ = attribute_answer_token(
                engine, row, 0, max_feature_nodes=n, batch_size=args.batch_size
            )
            rec = {
                "question_id": row["question_id"],
                "nodes": n,
                "n_pos": len(g.input_tokens),
                "active_features": int(g.active_features.shape[0]),
                "s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
                "peak_gb": _peak_gb(),
                **_scores(g, ctx),
            }
            results.append(rec)
            print(json.dumps({k: _round(v) for k, v in rec.items()}), flush=True)
    if args.out:
        from hallugraph.io import atomic_write_text

        lines = [json.dumps({k: _round(v) for k, v in r.items()}) for r in results]
        atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"\n{cpu_name()}, {args.threads} threads, {args.transcoders}")
    print("| nodes | answers | CPU s / answer (mean, max) | wall s / answer | peak RSS GiB |")
    print("|---:|---:|---:|---:|---:|")
    for n in sorted({r["nodes"] for r in results}):
        rs = [r for r in results if r["nodes"] == n]
        cpu = [r["cpu_s"] for r in rs]
        print(
            f"| {n} | {len(rs)} | {sum(cpu) / len(cpu):.2f}, {max(cpu):.2f} | "
            f"{sum(r['s'] for r in rs) / len(rs):.2f} | {max(r['peak_gb'] for r in rs):.2f} |"
        )
    return results


def compare_runs(run_a: str, run_b: str) -> list[dict]:
    """Per-trace |Δ| of Gctx / RS / CS between two scored runs, and their seconds."""
    from hallugraph.features.groundedness import read_scores

    a, b = read_scores(run_a), read_scores(run_b)
    common = sorted(set(a["scores"]) & set(b["scores"]))
    rows = []
    for qid in common:
        ra, rb = a["scores"][qid], b["scores"][qid]
        diff = max(abs(ra[k] - rb[k]) for k in ("gctx", "rs", "cs"))
        rows.append(
            {"question_id": qid, "max_diff": diff, "a_s": ra["seconds"], "b_s": rb["seconds"]}
        )
        print(json.dumps({k: v if k == "max_diff" else _round(v) for k, v in rows[-1].items()}))
    for name, pay in (("a", a), ("b", b)):
        secs = [r["seconds"] for r in pay["scores"].values()]
        st = pay["settings"] or {}
        print(
            f"{name}: {len(secs)} traces, {st.get('engine', 'circuit-tracer')}, "
            f"{st.get('max_feature_nodes')} nodes, mean {sum(secs) / max(len(secs), 1):.2f} s/trace"
        )
    if rows:
        print(f"common={len(rows)} max_score_diff={_fmt(max(r['max_diff'] for r in rows))}")
    return rows


def _compare(ours, theirs) -> dict:
    same = torch.equal(ours.selected_features, theirs.selected_features)
    out = {"same_selection": same}
    if same:
        a, b = ours.adjacency_matrix, theirs.adjacency_matrix
        scale = b.abs().amax(1, keepdim=True).clamp(min=1e-30)
        out["adjacency_max_scaled_diff"] = float(((a - b).abs() / scale).max())
    return out


def _source(model: str) -> str:
    from hallugraph.models import resolve_source

    return resolve_source(model)


def _table(results: list[dict], cpu: str, threads: int) -> None:
    print(f"\n{cpu}, {threads} threads")
    print(
        "| prompt | tokens | nodes | active | engine s | peak GB | ct s | speedup "
        "| max |Δ| score |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in results:
        print(
            f"| {r['question_id']} | {r['n_pos']} | {r['nodes']} | {r['active_features']} | "
            f"{r['engine_s']:.2f} | {r['engine_peak_gb']:.2f} | {_fmt(r.get('ct_s', math.nan))} | "
            f"{_fmt(r.get('speedup', math.nan))} | {_fmt(r.get('max_score_diff', math.nan))} |"
        )


def _fmt(v: float) -> str:
    if isinstance(v, float) and (math.isnan(v) or (v != 0 and abs(v) < 0.01)):
        return f"{v:.2e}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _round(v):
    return float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v


if __name__ == "__main__":
    main()

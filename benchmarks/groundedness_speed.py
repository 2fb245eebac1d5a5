"""Speed of ``hallugraph groundedness`` per trace, and how much Gctx / RS / CS move, at several
``max_feature_nodes`` budgets.

For each trace (``--run RUN --indices I,J``: traces of a run with a context, e.g. HaluEval-QA;
default: the ``--examples`` HaluEval-QA training-side prompts closest to ``--prompt-tokens``,
answered with their reference answer, as ``attribution_cost.py`` picks them) and each budget,
times what the command does per trace (:func:`hallugraph.attribution.run.score_trace`:
attribution + scoring) and prints one JSON line: seconds, the extra peak RSS of the call and
the process's peak RSS, the ratio of seconds to the largest budget's, Gctx / RS / CS and their
absolute change against the largest budget, then a Markdown table. Budgets run in increasing
order in one process (the first includes one-time costs unless ``--warmup``);
circuit-tracer's default of 7500 feature nodes joins only with ``--with-7500``.

``TRANSCODERS`` is a transcoder set folder (``hallugraph transcoders train``), or
``random:WIDTH`` for untrained random JumpReLU transcoders (a smoke test of the cost only:
their scores mean nothing). Needs ``make setup-attribution``.

    .venv/bin/python benchmarks/groundedness_speed.py TRANSCODERS --nodes 32,64,128,256 --threads 1
    .venv/bin/python benchmarks/groundedness_speed.py random:512 --run runs/x --indices 0 \\
        --nodes 8,16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
from pathlib import Path

import torch

from hallugraph.attribution.run import AttributionSettings, context_rows, score_trace
from hallugraph.attribution.settings import model_dir_of
from hallugraph.attribution.tracer import load_replacement_model
from hallugraph.attribution.transcoders import random_transcoder_set
from hallugraph.evaluation import PeakRSS
from hallugraph.store import TraceStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attribution_cost import closest_halueval_prompts  # noqa: E402


def random_transcoders(model_dir: str, width: int, out: Path) -> Path:
    """Random JumpReLU transcoders for the model in ``model_dir``: ``W_enc`` ~ N(0, 1/d), so
    a pre-activation is about N(0, |x|²/d), and threshold 2 leaves a few % of features on."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    d = int(cfg.hidden_size)
    n = int(cfg.num_hidden_layers)
    return random_transcoder_set(
        out / "random",
        n,
        d,
        width,
        enc_scale=d**-0.5,
        dec_scale=0.1 * d**-0.5,
        jumprelu_layers=range(n),
        threshold=2.0,
        scan="random",
    )


def benchmark_rows(args: argparse.Namespace) -> tuple[str, list[dict]]:
    """``(model_dir, rows)``: the traces to time, as manifest-like rows."""
    if args.run:
        store = TraceStore(args.run)
        model_dir = model_dir_of(store, args.model)
        if args.indices:
            rows = [store.get(int(i), fields=()) for i in args.indices.split(",")]
        else:
            rows = context_rows(store)[: args.examples]
        return model_dir, rows
    from hallugraph.models import load_model

    lm = load_model(args.model or "smollm2_135M", device="cpu")
    rows = []
    for p in closest_halueval_prompts(lm, args.prompt_tokens, args.examples):
        answer = p.example.references[0] if p.example.references else "yes"
        ans = lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append(
            {
                "question_id": p.example.id,
                "tokens": [*p.prompt_ids, *ans],
                "prompt_len": len(p.prompt_ids),
                "answer_len": len(ans),
                "context_span": list(p.context_span) if p.context_span else None,
                "finished": False,
            }
        )
    return lm.source, rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("transcoders", help="transcoder set folder, or random:WIDTH (smoke test)")
    ap.add_argument("--run", default=None, help="take the traces from this run")
    ap.add_argument("--indices", default=None, help="trace indices in --run (default: first)")
    ap.add_argument("--examples", type=int, default=1, help="traces (without --indices)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the run's / smollm2)")
    ap.add_argument("--nodes", default="32,64,128,256", help="max_feature_nodes budgets")
    ap.add_argument("--with-7500", action="store_true", help="add circuit-tracer's default 7500")
    ap.add_argument("--targets", choices=["first", "all"], default="first")
    ap.add_argument("--max-answer-tokens", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=90)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", action="store_true", help="one untimed graph first")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = sorted({int(x) for x in args.nodes.split(",") if x.strip()})
    if args.with_7500:
        budgets = sorted({*budgets, 7500})
    model_dir, rows = benchmark_rows(args)
    rows = [r for r in rows if r.get("context_span")]
    if not rows:
        raise SystemExit("no trace with a context span to time")
    with tempfile.TemporaryDirectory() as tmp:
        tdir = args.transcoders
        if tdir.startswith("random:"):
            tdir = random_transcoders(model_dir, int(tdir.split(":", 1)[1]), Path(tmp))
        rm = load_replacement_model(model_dir, tdir, device=args.device)
        if args.warmup:
            score_trace(rm, rows[0], AttributionSettings(max_feature_nodes=budgets[0]))
        results = []
        for row in rows:
            per = []
            for n in budgets:
                settings = AttributionSettings(
                    max_feature_nodes=n,
                    targets=args.targets,
                    max_answer_tokens=args.max_answer_tokens,
                    batch_size=args.batch_size,
                )
                with PeakRSS() as peak:
                    rec = score_trace(rm, row, settings)
                max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
                rec.update(
                    question_id=row["question_id"],
                    max_feature_nodes=n,
                    extra_peak_mb=round(peak.extra_mb, 1),
                    peak_rss_gb=round(max_rss / 2**20, 2),
                )
                per.append(rec)
            ref = per[-1]
            for rec in per:
                rec["ratio_vs_largest"] = round(rec["seconds"] / ref["seconds"], 3)
                for k in ("gctx", "rs", "cs"):
                    rec[f"d_{k}"] = abs(rec[k] - ref[k])
                print(json.dumps({k: _round(v) for k, v in rec.items()}), flush=True)
            results += per
    print(
        "\n| trace | nodes | s | ratio | peak RSS GB | Gctx | RS | CS | ΔGctx | ΔRS | ΔCS |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in results:
        print(
            f"| {r['question_id']} | {r['max_feature_nodes']} | {r['seconds']:.1f} | "
            f"{r['ratio_vs_largest']:.2f} | {r['peak_rss_gb']:.2f} | {r['gctx']:.3f} | "
            f"{r['rs']:.3f} | {r['cs']:.3f} | {r['d_gctx']:.3f} | {r['d_rs']:.3f} | "
            f"{r['d_cs']:.3f} |"
        )
    return results


def _round(v):
    return round(v, 4) if isinstance(v, float) and math.isfinite(v) else v


if __name__ == "__main__":
    main()

"""Cost of one circuit-tracer attribution graph on the default model, at several node budgets.

For the HaluEval-QA prompt (from the transcoders' training side) whose length is closest to
``--prompt-tokens``, builds the attribution graph with circuit-tracer's nnsight backend and the
transcoder set in ``TRANSCODERS`` (``hallugraph transcoders train`` output) at each
``--nodes`` budget, and prints one JSON line per budget: seconds, peak RSS, Gctx / RS / CS.
Needs ``make setup-attribution``.

    .venv/bin/python benchmarks/attribution_cost.py TRANSCODERS --nodes 64,128,256 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from hallugraph.attribution.scores import scores_from_graph
from hallugraph.attribution.tracer import (
    attribute_tokens,
    attribution_tokens,
    load_replacement_model,
)
from hallugraph.attribution.transcoders import halueval_train_questions
from hallugraph.extract import prepare
from hallugraph.models import load_model


def closest_halueval_prompts(lm, prompt_tokens: int, n: int = 1) -> list:
    """The ``n`` HaluEval-QA prompts (training side of the benchmark split, as
    :func:`~hallugraph.extract.inputs` renders them) whose token counts are closest to
    ``prompt_tokens``."""
    preps = prepare(lm, halueval_train_questions())
    return sorted(preps, key=lambda p: abs(len(p.prompt_ids) - prompt_tokens))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("transcoders", help="transcoder set folder (circuit-tracer format)")
    ap.add_argument("--model", default="smollm2_135M")
    ap.add_argument("--nodes", default="64,128,256", help="max_feature_nodes budgets")
    ap.add_argument("--prompt-tokens", type=int, default=90)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device="cpu")
    best = closest_halueval_prompts(lm, args.prompt_tokens)[0]
    print(f"{best.example.id}: {len(best.prompt_ids)} prompt tokens, context {best.context_span}")
    t0 = time.perf_counter()
    rm = load_replacement_model(lm.source, args.transcoders)
    print(f"replacement model loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    tokens, shift = attribution_tokens(rm.tokenizer, best.prompt_ids)
    ctx = [i + shift for i in range(*best.context_span)]
    for n in [int(x) for x in args.nodes.split(",")]:
        t0 = time.perf_counter()
        graph = attribute_tokens(rm, tokens, max_feature_nodes=n, batch_size=64)
        seconds = time.perf_counter() - t0
        scores = scores_from_graph(graph, ctx).to_dict()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        row = {"max_feature_nodes": n, "seconds": round(seconds, 1), "peak_rss_gb": round(peak, 2)}
        row["active_features"] = int(graph.active_features.shape[0])
        row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()})
        print(json.dumps(row), flush=True)
        del graph


if __name__ == "__main__":
    main()

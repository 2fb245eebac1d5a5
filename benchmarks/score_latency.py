"""Latency of scoring one new answer: ``Scorer.score`` against one plain forward pass.

For HaluEval-QA answers (context + question + a given answer, the RAG case), seconds per answer
of ``scorer.score(question, answer, context)`` — tokenize, teacher-forced capture, the
statistics the detector reads, the detector — against one plain teacher-forced forward pass of
the same tokens (``model(input_ids)``, logits for every position, the model as hallugraph
loads it: eager attention, fp32 on the CPU), in the same process, interleaved answer by answer
(median of ``--repeats`` timings each, then the mean over answers). A second baseline column
gives the forward pass with PyTorch's SDPA attention kernel (the fastest plain pass here).

Every detector that can score a new answer is trained on ``RUN`` (a labeled
``halueval_qa_tf`` run; CHARM with 10 epochs: training length does not change its prediction
cost) and warmed up before timing. The answers timed are the ones after the run's in the
dataset (new to the detectors).

Target: ratio <= 1.5 for lookback_lens and the logit baselines. The last line is
``detector=lookback_lens ratio=<x> score_ms=<a> forward_ms=<b>``.

    HALLUGRAPH_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/score_latency.py runs/tf36
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hallugraph.config import cpu_name
from hallugraph.data import load_halueval_qa_teacher_forced
from hallugraph.detectors import all_detectors
from hallugraph.extract import prepare
from hallugraph.models import load_model
from hallugraph.scoring import Scorer
from hallugraph.store import TraceStore

FAST = {"charm": {"epochs": 10}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="labeled halueval_qa_tf run of the default model")
    ap.add_argument("--num-answers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--detectors", default=None, help="comma-separated (default: all scorable)")
    ap.add_argument("--no-sdpa", action="store_true", help="skip the SDPA baseline column")
    ap.add_argument(
        "--decompose",
        action="store_true",
        help="cheaper, for many detectors: time the model pass (capture) once per answer and "
        "each detector's own part (trace layout, statistics, predict, token scores) on it",
    )
    args = ap.parse_args()

    store = TraceStore(args.run)
    model = store.info["model"]
    lm = load_model(model, dtype=store.info.get("model_dtype", "auto"), device="cpu")
    sdpa = None
    if not args.no_sdpa:
        sdpa = load_model(model, dtype=store.info.get("model_dtype", "auto"), device="cpu",
                          attn_implementation="sdpa")  # fmt: skip
    n_run = len(store)
    answers = load_halueval_qa_teacher_forced(num_samples=n_run + args.num_answers)[n_run:]
    names = (
        args.detectors.split(",")
        if args.detectors
        else sorted(n for n, c in all_detectors().items() if c.family != "attribution")
    )
    names = sorted(names, key=lambda n: n == "lookback_lens")  # lookback_lens last
    ids = [p.prompt_ids + p.answer_ids for p in prepare(lm, answers)]
    lens = [len(i) for i in ids]
    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}; model {model}")
    print(f"{len(answers)} HaluEval-QA answers, {min(lens)}-{max(lens)} tokens (prompt + answer)")

    @torch.inference_mode()
    def forward(m, tokens) -> float:
        t0 = time.perf_counter()
        m.model(input_ids=torch.tensor([tokens]), use_cache=False)
        return time.perf_counter() - t0

    if args.decompose:
        decompose(lm, args.run, names, answers, ids, forward)
        return
    rows = []
    for name in names:
        scorer = Scorer.train(name, [args.run], params=FAST.get(name), lm=lm)
        scorer.warm_up()
        score_s, fwd_s, sdpa_s = [], [], []
        for ex, tokens in zip(answers, ids, strict=True):
            s, f, g = [], [], []
            for _ in range(args.repeats):
                f.append(forward(lm, tokens))
                t0 = time.perf_counter()
                scorer.score(question=ex.question, answer=ex.answer, context=ex.context)
                s.append(time.perf_counter() - t0)
                g.append(forward(sdpa, tokens) if sdpa is not None else float("nan"))
            score_s.append(statistics.median(s))
            fwd_s.append(statistics.median(f))
            sdpa_s.append(statistics.median(g))
        a, b, c = (1000 * statistics.mean(v) for v in (score_s, fwd_s, sdpa_s))
        rows.append((name, a / b, a, b, a / c, c))
        print(
            f"  {name:18s} ratio={a / b:6.3f} score_ms={a:8.1f} forward_ms={b:8.1f} "
            f"(vs sdpa: ratio={a / c:6.3f} forward_sdpa_ms={c:8.1f})",
            flush=True,
        )
    name, ratio, a, b, _, _ = rows[-1]
    print(f"detector={name} ratio={ratio:.3f} score_ms={a:.1f} forward_ms={b:.1f}")


def decompose(lm, run, names, answers, ids, forward) -> None:
    """score = capture (one model pass, shared) + the detector's own part, per answer."""
    from hallugraph.extract import capture_batch
    from hallugraph.scoring.tokens import token_scores
    from hallugraph.scoring.trace import assemble, fields_of

    scorers = [Scorer.train(n, [run], params=FAST.get(n), lm=lm) for n in names]
    for sc in scorers:
        sc.warm_up()
    first = scorers[0]
    recs = [{"question": e.question, "answer": e.answer, "context": e.context} for e in answers]
    prepared = first.check(recs)
    fwd, cap, own = [], [], {n: [] for n in names}
    for p, tokens in zip(prepared, ids, strict=True):
        fwd.append(forward(lm, tokens))
        t0 = time.perf_counter()
        trace = capture_batch(lm, [p], first._settings(), first.meta["prompt"]["prefix_tokens"])
        cap.append(time.perf_counter() - t0)
        for sc in scorers:
            t0 = time.perf_counter()
            d = assemble(trace[0], fields_of(sc.stats), sc.meta["model"]["trace_dtype"])
            sc.predict_traces([d])
            token_scores(sc.detector, d, p.example.answer, lm.tokenizer)
            own[sc.name].append(time.perf_counter() - t0)
    b, c = 1000 * statistics.mean(fwd), 1000 * statistics.mean(cap)
    print(f"decomposed: forward_ms={b:.1f} capture_ms={c:.1f} (capture/forward {c / b:.3f})")
    for n in names:
        a = 1000 * statistics.mean(own[n])
        print(
            f"  {n:18s} ratio={(c + a) / b:6.3f} score_ms={c + a:8.1f} (own part {a:7.1f} ms)",
            flush=True,
        )


if __name__ == "__main__":
    main()

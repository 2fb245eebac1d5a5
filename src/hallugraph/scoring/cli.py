"""``hallugraph train`` / ``score`` / ``serve`` (registered by :func:`add_scoring_parsers`).

::

    hallugraph train lookback_lens runs/tf36 --out detectors/lookback
    hallugraph train lookback_lens --data my_answers.jsonl --out detectors/mine
    hallugraph score detectors/lookback --question Q --answer A --context-file doc.txt
    hallugraph score detectors/lookback --input in.jsonl --output out.jsonl
    hallugraph serve detectors/lookback --port 8000

``--data FILE`` (JSONL or CSV with ``question``, ``answer``, ``label`` (1 = hallucinated) and
optionally ``context``, ``id``, ``group``) extracts the teacher-forced traces of those answers
into a run (``--run``, default ``runs/<file stem>``), labels them with the file's labels, then
trains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hallugraph.io import atomic_write_text, jsonable


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param takes NAME=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_scoring_parsers(sub: Any) -> None:
    """Add the ``train``, ``score`` and ``serve`` subcommands to ``sub``."""
    p = sub.add_parser("train", help="train a detector on labeled runs and save it to a folder")
    p.add_argument("detector", help="registered detector name, e.g. lookback_lens")
    p.add_argument("runs", nargs="*", help="labeled run directories (one model, one template)")
    p.add_argument("--out", required=True, help="folder for detector.json + weights.safetensors")
    p.add_argument(
        "--data",
        default=None,
        help="your own labeled answers (.jsonl/.csv: question, answer, label, context?): "
        "extracted into --run, labeled, then trained on",
    )
    p.add_argument("--run", default=None, help="run folder for --data (default: runs/<stem>)")
    p.add_argument(
        "--model", default="smollm2_135M", help="model for --data (default: %(default)s)"
    )
    p.add_argument("--param", action="append", type=_param, default=[], help="NAME=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-refit",
        action="store_true",
        help="keep the train-split fit (the benchmark's detector) instead of refitting on "
        "train + validation",
    )
    p.add_argument("--device", default=None)
    p.set_defaults(scoring=run_train)

    p = sub.add_parser("score", help="score answers with a trained detector")
    p.add_argument("bundle", help="detector folder (hallugraph train --out)")
    p.add_argument("--question", default=None)
    p.add_argument("--answer", default=None)
    ctx = p.add_mutually_exclusive_group()
    ctx.add_argument("--context", default=None)
    ctx.add_argument("--context-file", default=None, help="read the context from this file")
    p.add_argument("--input", default=None, help="JSONL: question, answer, context?, id?")
    p.add_argument("--output", default=None, help="JSONL: each input line + its verdict")
    p.add_argument("--tokens", action="store_true", help="include per-token scores")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None, help="longest prompt + answer")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(scoring=run_score)

    p = sub.add_parser("serve", help="serve a trained detector over HTTP (extra 'serve')")
    p.add_argument("bundle", help="detector folder (hallugraph train --out)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(scoring=run_serve)


def _load(args: argparse.Namespace) -> Any:
    from hallugraph.scoring.scorer import DEFAULT_MAX_TOKENS, Scorer

    max_tokens = args.max_tokens or DEFAULT_MAX_TOKENS
    return Scorer.load(args.bundle, device=args.device, max_tokens=max_tokens)


def run_train(args: argparse.Namespace) -> int:
    from hallugraph.scoring.scorer import Scorer

    runs = list(args.runs)
    if args.data:
        from hallugraph.scoring.userdata import extract_labeled

        run = args.run or str(Path("runs") / Path(args.data).stem)
        extract_labeled(args.data, run, model=args.model, device=args.device)
        runs.append(run)
    if not runs:
        raise ValueError("give labeled run folders, or your own labeled answers with --data")
    scorer = Scorer.train(
        args.detector,
        runs,
        params=dict(args.param),
        seed=args.seed,
        refit=not args.no_refit,
        device=args.device,
    )
    out = scorer.save(args.out)
    fit = scorer.meta["fit"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    print(f"detector {scorer.name} trained on {', '.join(runs)} ({fit['fitted_on']})")
    print(f"validation AUROC {fmt(fit['validation_auroc'])} (n={fit['n_val']})")
    print(f"threshold {scorer.threshold:.6f} ({scorer.meta['threshold_rule']})")
    print(f"held-out test AUROC {fmt(fit['test_auroc'])} (n={fit['n_test']})")
    print(f"saved to {out}")
    return 0


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise ValueError(f"input file not found: {path}")
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not valid JSON ({err})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            records.append((n, rec))
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def run_score(args: argparse.Namespace) -> int:
    from hallugraph.scoring.scorer import ScoringError

    if args.input:
        if args.question or args.answer or args.context or args.context_file:
            raise ValueError("give either --input or --question/--answer, not both")
        if not args.output:
            raise ValueError("--input needs --output (a JSONL file)")
        path = Path(args.input)
        numbered = _read_jsonl(path)
        scorer = _load(args)
        recs = [r for _, r in numbered]
        try:
            scorer.check(recs)
        except ScoringError as err:  # "record i: ..." -> the file's line
            msg = str(err)
            if msg.startswith("record "):
                i = int(msg.split(":", 1)[0].split()[1])
                msg = f"{path}:{numbered[i][0]}:{msg.split(':', 1)[1]}"
            raise ScoringError(msg) from None
        verdicts = scorer.score_batch(recs, args.batch_size, progress=not args.no_progress)
        lines = []
        for rec, v in zip(recs, verdicts, strict=True):
            out = {**rec, **{k: v.to_dict()[k] for k in _FIELDS}}
            if args.tokens and v.tokens is not None:
                out["tokens"] = v.to_dict()["tokens"]
            lines.append(json.dumps(jsonable(out), ensure_ascii=False) + "\n")
        atomic_write_text(args.output, "".join(lines))
        n_hal = sum(v.hallucinated for v in verdicts)
        print(f"{len(verdicts)} answers scored ({n_hal} flagged hallucinated) -> {args.output}")
        return 0
    if args.answer is None or args.question is None:
        raise ValueError("give --question and --answer (or --input FILE --output FILE)")
    context = args.context
    if args.context_file:
        cf = Path(args.context_file)
        if not cf.is_file():
            raise ValueError(f"context file not found: {cf}")
        context = cf.read_text(encoding="utf-8")
    scorer = _load(args)
    v = scorer.score(question=args.question, answer=args.answer, context=context)
    out = {k: v.to_dict()[k] for k in _FIELDS}
    if args.tokens and v.tokens is not None:
        out["tokens"] = v.to_dict()["tokens"]
    print(json.dumps(out, ensure_ascii=False))
    return 0


_FIELDS = ("hallucination_score", "hallucinated", "threshold")


def run_serve(args: argparse.Namespace) -> int:
    from hallugraph.scoring.server import serve

    scorer = _load(args)
    print(
        f"serving {scorer.name} ({scorer.meta['model']['name']}) on "
        f"http://{args.host}:{args.port} (POST /v1/score)",
        file=sys.stderr,
        flush=True,
    )
    serve(scorer, host=args.host, port=args.port)
    return 0

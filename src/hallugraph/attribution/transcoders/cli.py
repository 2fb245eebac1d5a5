"""``hallugraph transcoders {train,eval}``: argument parsing and dispatch."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hallugraph.attribution.transcoders.corpus import EVAL_TOKENS
from hallugraph.attribution.transcoders.train import PRESETS, TrainConfig

__all__ = ["add_parser", "run"]

#: CLI flag -> TrainConfig field (flags left unset take the preset's or the default value)
_FLAGS = {
    "width": int,
    "k": int,
    "lr": float,
    "decay_frac": float,
    "skip_pool": str,
    "batch_tokens": int,
    "window": int,
    "prompt_share": float,
    "skip_tokens": int,
    "dead_tokens": int,
    "k_aux": int,
    "aux_coef": float,
    "enc_init": float,
    "resample_every": int,
    "resample_init": str,
    "export_l0": float,
    "checkpoint_every": int,
    "seed": int,
}


def add_parser(sub: Any) -> None:
    """Register ``transcoders {train,eval}`` on the main parser's subparsers."""
    p = sub.add_parser("transcoders", help="per-layer skip transcoders for attribution graphs")
    tsub = p.add_subparsers(dest="transcoders_command", required=True)
    t = tsub.add_parser(
        "train",
        help="train per-layer skip transcoders (circuit-tracer format); re-run to resume",
        description=(
            "Train one skip transcoder per layer (MLP input -> MLP output: least-squares skip, "
            "then a BatchTopK sparse part exported as JumpReLU) from one bfloat16 forward of "
            "the model per batch, on offline text outside the benchmarks' test data; save it "
            "in circuit-tracer's format with manifest.json, and print FVU / L0 / dead per "
            "layer on held-out text. Interrupted or out of time? Run the same command again."
        ),
    )
    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="settings + budgets of a documented run (flags given override them)",
    )
    t.add_argument("--model", default="smollm2_135M", help="short name, HF id or local path")
    t.add_argument(
        "--out",
        default=None,
        help="output folder (default: ~/.cache/hallugraph/transcoders/<model>/"
        "<preset or skip_w<width>_k<k>>)",
    )
    t.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="total sparse-phase token budget over all runs into --out",
    )
    t.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="stop this invocation after SECONDS (checkpointed: run again to go on)",
    )
    for name, typ in _FLAGS.items():
        t.add_argument(
            f"--{name.replace('_', '-')}",
            type=typ,
            default=None,
            help=f"TrainConfig.{name} (default {getattr(TrainConfig(), name)})",
        )
    t.add_argument(
        "--sources",
        default=None,
        help="general text sources, comma-separated (default python_docs,gcide)",
    )
    t.add_argument("--data-dir", default=None, help="benchmark data folder")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    t.add_argument("--eval-texts", type=int, default=None, help="texts per held-out set at most")
    t.add_argument(
        "--eval-tokens",
        type=int,
        default=EVAL_TOKENS,
        help=f"tokens per held-out set (default {EVAL_TOKENS}; 0: all held-out texts)",
    )
    t.add_argument("--no-progress", action="store_true")
    e = tsub.add_parser(
        "eval",
        help="per-layer FVU / L0 / dead of a transcoder set on held-out text",
        description=(
            "Evaluate SET (a folder with config.yaml + layer_{i}.safetensors) on held-out "
            "HaluEval-QA (context + question + answer) and TriviaQA texts with the float32 "
            "model: FVU, the skip-alone FVU, L0 and dead features per layer."
        ),
    )
    e.add_argument("set", help="transcoder set folder")
    e.add_argument("--model", default="smollm2_135M")
    e.add_argument("--max-texts", type=int, default=None, help="texts per held-out set at most")
    e.add_argument(
        "--tokens",
        type=int,
        default=EVAL_TOKENS,
        help=f"tokens per held-out set (default {EVAL_TOKENS}: dead_frac counts features never "
        "active on them, so fewer tokens count rare features as dead; 0: all held-out texts)",
    )
    e.add_argument("--data-dir", default=None)
    e.add_argument("--json", default=None, help="also write the tables to this JSON file")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--no-progress", action="store_true")
    c = tsub.add_parser(
        "calibrate",
        help="copy a set with its JumpReLU thresholds raised to a target L0 (no retraining)",
        description=(
            "Write OUT: SET with each layer's JumpReLU threshold raised to the smallest value "
            "at which the mean L0 on HaluEval-QA-format training-side text (never the "
            "held-out text) is at most --l0; thresholds are never lowered. Then run "
            "`transcoders eval OUT`."
        ),
    )
    c.add_argument("set", help="transcoder set folder")
    c.add_argument("out", help="new set folder (may be SET itself)")
    c.add_argument("--l0", type=float, required=True, help="target mean L0 per layer")
    c.add_argument("--tokens", type=int, default=20_000, help="calibration tokens")
    c.add_argument(
        "--keep",
        type=int,
        default=4,
        help="every feature keeps firing on its KEEP largest calibration activations (0: one cut)",
    )
    c.add_argument("--model", default="smollm2_135M")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--no-progress", action="store_true")


def _config(args: argparse.Namespace) -> tuple[TrainConfig, int | None, float | None]:
    base, tokens, budget = PRESETS[args.preset] if args.preset else (TrainConfig(), None, None)
    d = base.to_dict()
    for name in _FLAGS:
        v = getattr(args, name)
        if v is not None:
            d[name] = v
    if args.sources:
        d["sources"] = [s.strip() for s in args.sources.split(",") if s.strip()]
    cfg = TrainConfig.from_dict(d)
    tokens = args.tokens if args.tokens is not None else tokens
    budget = args.time_budget if args.time_budget is not None else budget
    return cfg, tokens, budget


def run(args: argparse.Namespace) -> int:
    """Dispatch ``hallugraph transcoders ...``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.transcoders_command == "calibrate":
        from pathlib import Path

        from hallugraph.attribution.transcoders.calibrate import calibrate_set

        if not (Path(args.set) / "config.yaml").exists():
            print(f"error: {args.set} is not a transcoder set (no config.yaml)", file=sys.stderr)
            return 2
        entry = calibrate_set(
            args.set,
            args.out,
            target_l0=args.l0,
            model=args.model,
            tokens=args.tokens,
            data_dir=args.data_dir,
            progress=not args.no_progress,
            keep=args.keep,
        )
        keys = ("target_l0", "tokens", "l0_before_mean", "l0_mean")
        print(json.dumps({"out": args.out, **{k: entry[k] for k in keys}}))
        return 0
    if args.transcoders_command == "eval":
        from pathlib import Path

        from hallugraph.attribution.transcoders.evaluate import format_table
        from hallugraph.attribution.transcoders.run import eval_set
        from hallugraph.io import atomic_write_json

        if not (Path(args.set) / "config.yaml").exists():
            print(f"error: {args.set} is not a transcoder set (no config.yaml)", file=sys.stderr)
            return 2
        result = eval_set(
            args.set,
            args.model,
            data_dir=args.data_dir,
            max_texts=args.max_texts,
            tokens=args.tokens or None,
            progress=not args.no_progress,
        )
        print(format_table(result["tables"]))
        if args.json:
            atomic_write_json(args.json, result)
        return 0
    from hallugraph.attribution.transcoders.io import default_set_dir
    from hallugraph.attribution.transcoders.run import train_set

    cfg, tokens, budget = _config(args)
    if tokens is None:
        print("error: give --tokens (or a --preset)", file=sys.stderr)
        return 2
    name = args.preset or f"skip_w{cfg.width}_k{cfg.k}"
    out = args.out or default_set_dir(args.model, name)
    m = train_set(
        out,
        cfg,
        model=args.model,
        tokens=tokens,
        time_budget=budget,
        data_dir=args.data_dir,
        evaluate=not args.no_eval,
        eval_max_texts=args.eval_texts,
        eval_tokens=args.eval_tokens or None,
        progress=not args.no_progress,
        preset=args.preset,
    )
    keys = ("tokens", "seconds", "tokens_per_s", "stopped", "exported")
    print(json.dumps({"out": str(out), **{k: m.get(k) for k in keys}}))
    return 0

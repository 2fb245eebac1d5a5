"""``hallugraph transcoders train``: the command line of :mod:`hallugraph.attribution.transcoders`.

Kept here so that :mod:`hallugraph.cli` only needs two lines (register, dispatch).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_transcoders_parser(sub: Any) -> None:
    """Register ``transcoders {train}`` on the main parser's subparsers."""
    p = sub.add_parser("transcoders", help="per-layer transcoders for attribution graphs")
    tsub = p.add_subparsers(dest="transcoders_command", required=True)
    t = tsub.add_parser(
        "train",
        help="train per-layer transcoders (circuit-tracer format); re-run to resume",
        description=(
            "Train one transcoder per layer (MLP input after post_attention_layernorm -> MLP "
            "output) on benchmark prompts outside the test sets, save them in circuit-tracer's "
            "format, and report FVU and L0 per layer on held-out text. Interrupted or out of "
            "budget? Run the same command again (with a larger --tokens) to continue."
        ),
    )
    t.add_argument("--model", default="smollm2_135M", help="short name, HF id or local path")
    t.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    t.add_argument(
        "--out",
        "--cache",
        dest="out",
        default=None,
        help="output folder (default: ~/.cache/hallugraph/transcoders/<model>/<settings>)",
    )
    t.add_argument("--tokens", type=int, required=True, help="total training token budget")
    t.add_argument(
        "--time-budget", type=float, default=None, help="stop this run after SECONDS (resumable)"
    )
    t.add_argument("--width", type=int, default=4608, help="features per layer (default 8·576)")
    t.add_argument("--activation", choices=["relu", "jumprelu"], default="relu")
    t.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="sparsity coefficient λ (default: 1.0 L1 for relu, 1e-3 L0 for jumprelu)",
    )
    t.add_argument(
        "--init-threshold",
        type=float,
        default=0.1,
        help="jumprelu: initial threshold in normalized units (2.0 starts near L0 ~ 2 %%)",
    )
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-texts", type=int, default=16, help="texts per step")
    t.add_argument("--max-len", type=int, default=256, help="tokens per text (truncated)")
    t.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    t.add_argument("--eval-texts", type=int, default=64, help="held-out texts for the report")
    t.add_argument(
        "--sources",
        default="triviaqa,halueval_qa",
        help="training text: triviaqa (records 2000+), halueval_qa (seed-0 train split)",
    )
    t.add_argument(
        "--max-texts-per-source", type=int, default=None, help="cap per source (quick tries)"
    )
    t.add_argument("--data-dir", default=None, help="benchmark data folder")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")


def run_transcoders(args: argparse.Namespace) -> int:
    """Dispatch ``hallugraph transcoders ...``."""
    if args.transcoders_command != "train":  # pragma: no cover - argparse enforces it
        raise ValueError(f"unknown transcoders command {args.transcoders_command!r}")
    import json

    import torch

    from hallugraph.attribution.transcoders import (
        TrainConfig,
        corpus_texts,
        default_out_dir,
        train_transcoders,
    )
    from hallugraph.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    sparsity = args.sparsity
    if sparsity is None:
        sparsity = 1.0 if args.activation == "relu" else 1e-3
    cfg = TrainConfig(
        width=args.width,
        activation=args.activation,
        sparsity=sparsity,
        lr=args.lr,
        batch_texts=args.batch_texts,
        max_len=args.max_len,
        checkpoint_every=args.checkpoint_every,
        eval_texts=args.eval_texts,
        init_threshold=args.init_threshold,
        seed=args.seed,
        sources=tuple(s.strip() for s in args.sources.split(",") if s.strip()),
    )
    lm = load_model(args.model, device=args.device, dtype="float32")
    texts = corpus_texts(lm, cfg.sources, args.data_dir, args.max_texts_per_source)
    out = args.out or default_out_dir(args.model, cfg)
    print(f"Training {lm.num_layers} transcoders of {cfg.width} features into {out}")
    result = train_transcoders(
        lm,
        texts,
        out,
        cfg,
        tokens=args.tokens,
        time_budget=args.time_budget,
        progress=not args.no_progress,
        log=print,
    )
    print(
        json.dumps(
            {
                "out": str(result.out),
                "steps": result.steps,
                "tokens": result.tokens,
                "stopped": result.stopped,
                "train_seconds": round(result.seconds, 1),
            }
        )
    )
    return 0

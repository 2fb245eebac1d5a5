"""The command line's arguments: one sub-parser per command (the attribution, scoring and viewer
commands add their own)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

DEFAULT_RUNS = Path("runs")
MAIN_DATASETS = ("triviaqa", "truthfulqa", "halueval_qa_tf")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="smollm2_135M",
        help="short name, HF id or local path (default: %(default)s)",
    )
    p.add_argument(
        "--quantize", choices=["4bit"], default=None, help="load NF4 4-bit weights (CUDA only)"
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument(
        "--model-dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="dtype the model computes in (auto: float32 on CPU, float16 on GPU)",
    )


def _int_at_least(minimum: int, words: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum`` (``words`` says the bound in the error)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be {words}, not {n}")
        return n

    return parse


_positive_int = _int_at_least(1, "at least 1")
_nonnegative_int = _int_at_least(0, "0 or more")


def _add_extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-samples", type=_positive_int, default=None, help="first N examples (default: all)"
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=_positive_int,
        default=None,
        help="longest prompt accepted, in tokens (default: the model's context window minus "
        "--max-new-tokens); checked before any compute",
    )
    p.add_argument(
        "--on-long-prompt",
        choices=["skip", "refuse"],
        default="skip",
        help="an example over the context window or --max-prompt-tokens: skip it with an error "
        "row, or refuse the whole run (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument(
        "--batch-tokens",
        type=_nonnegative_int,
        default=None,
        help="token budget of a batch: a batch of long prompts is cut so that its size x "
        "longest sequence (prompt + --max-new-tokens, or the given answer) stays within it, and "
        "its attention cells within those of --batch-size sequences of N / --batch-size tokens "
        "(default: --batch-size x (96 + --max-new-tokens); 0: no budget)",
    )
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy (default); the seed used 5")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--capture",
        choices=["auto", "incremental", "forward"],
        default="auto",
        help="how the final photo is taken (see docs/EXTRACTION.md; default: %(default)s)",
    )
    p.add_argument(
        "--shard-size",
        type=_positive_int,
        default=64,
        help="traces per shard, and examples per unit of work: a worker holds one unit at most "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-shard-mb",
        type=float,
        default=4096.0,
        help="fewer traces per shard when they would pass this many MB (a shard is held in "
        "memory until written; default: %(default)s)",
    )
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument(
        "--codec",
        choices=["fp16", "predictive"],
        default="fp16",
        help="predictive: store each fp16 tensor losslessly as its difference from the model's "
        "own prediction (several times smaller; reading needs the model, same machine type)",
    )
    p.add_argument(
        "--data-dir", default=None, help="benchmark data folder (or $HALLUGRAPH_DATA_DIR)"
    )
    p.add_argument(
        "--template", default=None, help="prompt template with {question} (and {context})"
    )
    p.add_argument(
        "--keep-tensors",
        choices=["yes", "no"],
        default="yes",
        help="no: compute every statistic per shard, then delete its raw tensors (saves disk)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g = p.add_argument_group("scaling out (docs/EXTRACTION.md, Scaling out)")
    g.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="extract on N Ray workers, each with its own model (a local Ray is started for the "
        "run unless --ray-address is given; needs the `distributed` extra)",
    )
    g.add_argument("--ray-address", default=None, help="run on an existing Ray cluster (auto, ...)")
    g.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0.5: two share one)"
    )
    g.add_argument("--threads-per-worker", type=_positive_int, default=1, help="CPU threads each")
    g.add_argument(
        "--num-parts",
        type=_positive_int,
        default=1,
        help="other schedulers (SLURM arrays): the run is cut in K parts, this process does "
        "--part I; then `hallugraph merge RUN`",
    )
    g.add_argument("--part", type=int, default=0, help="which part, 0..K-1 (default: 0)")


def _add_cv_args(p: argparse.ArgumentParser, folds: int, repeats: int) -> None:
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="question resamples (default: %(default)s)"
    )
    p.add_argument(
        "--folds", type=int, default=folds, help="cross-validation folds (default: %(default)s)"
    )
    p.add_argument(
        "--repeats", type=int, default=repeats, help="repeats of the k-fold (default: %(default)s)"
    )


def default_processes() -> int:
    """Evaluation processes for ``hallugraph run``: the cores this process may use, at most 4
    (each holds the runs' statistics; 4 keep ``make run`` under ~10 GB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hallugraph",
        description="Detect LLM hallucinations from the model's own computation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="answer questions and store full-sequence traces")
    _add_model_args(p)
    p.add_argument(
        "--dataset", required=True, help="triviaqa, truthfulqa, halueval_qa, or a .jsonl/.csv file"
    )
    p.add_argument(
        "--columns",
        default=None,
        help="column mapping for your own file, e.g. question=q,references=answers,id=qid",
    )
    p.add_argument("--out", required=True, help="run directory (re-run the same command to resume)")
    _add_extract_args(p)

    p = sub.add_parser(
        "merge", help="publish a run extracted with --num-parts: its manifest, from the parts"
    )
    p.add_argument("run", help="run directory")

    p = sub.add_parser("info", help="summarize a run directory")
    p.add_argument("run", help="run directory")

    p = sub.add_parser(
        "verify", help="check every file of runs against their checksums (exit 1 when damaged)"
    )
    p.add_argument("runs", nargs="+", help="run directories")

    p = sub.add_parser("label", help="label every trace of a run (1 = hallucinated)")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument(
        "--method",
        choices=["rouge", "embedding"],
        default="rouge",
        help="TruthfulQA similarity (default: %(default)s)",
    )
    p.add_argument("--spot-check", type=int, default=20, help="random examples written for a human")

    p = sub.add_parser("stats", help="compute (and cache) every statistic the detectors use")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--prune", action="store_true", help="then delete the raw tensors")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "evaluate", help="benchmark every detector on labeled runs (resumable: run it again)"
    )
    p.add_argument("runs", nargs="+", help="labeled run directories (one per dataset)")
    p.add_argument("--detectors", default=None, help="comma-separated names (default: all)")
    p.add_argument(
        "--out", default=None, help="folder for the table, CSV/JSON, scores, plots and cells/"
    )
    p.add_argument("--seed", type=int, default=0)
    _add_cv_args(p, folds=5, repeats=3)
    p.add_argument("--no-transfer", action="store_true", help="skip cross-dataset transfer")
    p.add_argument("--no-lodo", action="store_true", help="skip leave-one-dataset-out")
    p.add_argument(
        "--processes", type=int, default=1, help="worker processes for the cells (1 thread each)"
    )
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("graph", help="draw one trace's attention graph at one layer (PNG)")
    p.add_argument("run", help="run directory (raw tensors kept)")
    p.add_argument("--index", type=int, required=True, help="trace index in the run")
    p.add_argument("--layer", type=int, required=True, help="layer (negative: from the end)")
    p.add_argument("--png", required=True, help="output PNG file")
    p.add_argument("--top-k", type=int, default=3, help="heaviest in-edges kept per token (3)")
    p.add_argument("--threshold", type=float, default=None, help="minimum edge weight")
    p.add_argument("--heads", choices=["mean", "all"], default="mean")
    p.add_argument(
        "--hide-sink", action="store_true", help="drop the edges out of token 0 (attention sink)"
    )

    p = sub.add_parser(
        "hypothesis", help="test: hallucinated answers attend less to the context (per layer)"
    )
    p.add_argument("runs", nargs="+", help="labeled run directories (one per dataset)")
    p.add_argument("--out", required=True, help="folder for hypothesis.csv/json and the plots")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--correction", choices=["holm", "bh"], default="holm")
    p.add_argument("--no-progress", action="store_true")

    from hallugraph.attribution.benchmark_cli import add_groundedness_eval_parser
    from hallugraph.attribution.cli import (
        add_attribution_parser,
        add_groundedness_parser,
        add_transcoders_parser,
    )

    add_transcoders_parser(sub)  # hallugraph transcoders train ...
    add_groundedness_parser(sub)  # hallugraph groundedness RUN
    add_attribution_parser(sub)  # hallugraph attribution RUN --index I
    add_groundedness_eval_parser(sub)  # hallugraph groundedness-eval OUT
    from hallugraph.scoring.cli import add_scoring_parsers

    add_scoring_parsers(sub)  # hallugraph train / score / serve

    from hallugraph.viewer.cli import add_view_parser

    add_view_parser(sub)  # hallugraph view RUN [RUN ...]

    p = sub.add_parser(
        "run", help="the main job: extract on the default model and data, then summarize"
    )
    _add_model_args(p)
    p.add_argument(
        "--datasets", default=",".join(MAIN_DATASETS), help="comma-separated (default: %(default)s)"
    )
    p.add_argument("--out", default=str(DEFAULT_RUNS / "main"), help="parent folder of the runs")
    p.add_argument("--detectors", default=None, help="comma-separated names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    _add_cv_args(p, folds=3, repeats=1)
    p.add_argument(
        "--processes",
        type=int,
        default=default_processes(),
        help="evaluation worker processes, 1 thread each (default: the cores, at most 4: "
        "%(default)s here)",
    )
    _add_extract_args(p)
    p.set_defaults(num_samples=300, keep_tensors="no")
    return parser

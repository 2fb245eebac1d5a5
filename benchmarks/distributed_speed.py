"""Extraction scaled out on Ray: 1 worker x 1 thread against 2 workers x 1 thread, one process.

After an untimed warm-up (``--warmup`` other questions, 1 worker: the model file and the
Python modules in the page cache for both timed runs alike), both runs extract the same
TriviaQA questions with the default model into fresh run folders,
on one local Ray started here (``--threads`` CPUs per worker, ``--workers`` workers at most),
cut into units of ``--shard-size`` questions (several units per worker, so that the pool can
balance them). Each time is the whole ``run_extract`` call: workers start and load the model,
units run, the driver publishes the manifest. The two runs must hold the same traces (their
manifests, tensor checksums included, are compared), else the script fails.

Prints the CPU, both times, and last, exactly ``workers=2 speedup=<x>`` (target >= 1.8 on
2 cores). ``--gpus-per-worker 0.5`` runs the workers on one shared GPU.

    .venv/bin/python benchmarks/distributed_speed.py --num-samples 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from hallugraph.config import cpu_name, restart_with_bounded_heap
from hallugraph.data import load_dataset
from hallugraph.extract import GenerationSettings
from hallugraph.extract.distributed import import_ray
from hallugraph.pipeline import run_extract


def timed_run(out: Path, workers: int, args: argparse.Namespace, examples) -> float:
    t0 = time.perf_counter()
    s = run_extract(
        model=args.model,
        dataset="triviaqa",
        out=out,
        examples=examples,
        settings=GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
        shard_size=args.shard_size,
        workers=workers,
        threads_per_worker=args.threads,
        gpus_per_worker=args.gpus_per_worker,
        keep_tensors=True,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    if s.total != len(examples) or s.errors:
        raise SystemExit(f"{out}: {s.total} traces, {s.errors} errors: {s.error_messages[:3]}")
    return seconds


def manifest(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "manifest.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2_135M")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    ap.add_argument("--shard-size", type=int, default=8, help="questions per unit")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--keep", default=None, help="keep the two runs in this folder")
    ap.add_argument(
        "--warmup",
        type=int,
        default=8,
        help="first extract this many other questions with 1 worker, untimed (0: none), so "
        "that neither timed run pays for a cold page cache (model file, Python modules)",
    )
    args = ap.parse_args()
    restart_with_bounded_heap()  # as `hallugraph extract`: driver and workers alike

    ray = import_ray()
    examples = load_dataset(
        "triviaqa", data_dir=args.data_dir, num_samples=args.num_samples + args.warmup
    )
    warm, examples = examples[args.num_samples :], examples[: args.num_samples]
    ray.init(num_cpus=args.workers * args.threads, include_dashboard=False)
    root = Path(args.keep or tempfile.mkdtemp(prefix="hallugraph_distributed_"))
    try:
        if warm:
            seconds = timed_run(root / "warmup", 1, args, warm)
            print(f"warm-up, {len(warm)} other questions, 1 worker (not compared): {seconds:.1f} s")
        times = {}
        for n in (1, args.workers):
            out = root / f"workers{n}"
            shutil.rmtree(out, ignore_errors=True)
            times[n] = timed_run(out, n, args, examples)
            print(f"{n} worker(s) x {args.threads} thread(s): {times[n]:.1f} s", flush=True)
        a, b = manifest(root / "workers1"), manifest(root / f"workers{args.workers}")
        if a != b:
            raise SystemExit(
                "the two runs differ: their manifests (tensor checksums) are not equal"
            )
        print(f"same {len(a)} traces in both runs (manifests and tensor checksums equal)")
    finally:
        ray.shutdown()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    gpu = f", {args.gpus_per_worker} GPU per worker" if args.gpus_per_worker else ""
    print(
        f"CPU: {cpu_name()} ({os.cpu_count()} cores){gpu}; {args.num_samples} TriviaQA questions, "
        f"units of {args.shard_size}, batch {args.batch_size}, {args.max_new_tokens} new tokens"
    )
    print(f"workers={args.workers} speedup={times[1] / times[args.workers]:.2f}")


if __name__ == "__main__":
    main()

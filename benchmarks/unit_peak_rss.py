"""Peak RSS of one unit of a long run, extracted on its own (issue 16).

A run's peak RSS is the peak of its heaviest unit: a process holds one unit at a time. This
script extracts only unit ``--unit`` (``--shard-size`` questions) of the first
``--num-samples`` TriviaQA questions, with ``--keep-tensors no`` as in the issue's command,
and prints the process's peak RSS (``VmHWM``). Unit 5 of the first 1,000 holds the longest
prompt of those 1,000 (162 tokens; the 31 others of its batch have 64 to 88): comparing
it with a run of 100 questions (units 0 and 1) tells whether the peak depends on the run's
length or only on what one unit holds.

    /usr/bin/time -v .venv/bin/python benchmarks/unit_peak_rss.py --unit 5 --out /tmp/u5

``--batch-tokens 0`` batches as before the token budget (chunks of 32 prompts): the long prompt
then pads a batch of 32.

``--every-unit`` extracts all the first ``--num-samples`` questions in one run instead and prints,
for each unit, the resident size before it, its peak (``VmHWM`` reset before the unit through
``/proc/self/clear_refs``) and the resident size after it, before and after the worker hands the
freed heap back (``release_memory``; ``--no-trim`` skips it, as before it existed).
"""

from __future__ import annotations

import argparse

from hallugraph.config import cpu_name, restart_with_bounded_heap


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith(key + ":"))


def _watch_units(trim: bool) -> None:
    """Print each unit's resident sizes (kB) as the worker finishes it."""
    from hallugraph.pipeline import worker

    release = worker.release_memory
    run_unit = worker.UnitWorker.run_unit
    seen: dict[str, int] = {}

    def measured_release() -> bool:
        seen.update(hwm=_status("VmHWM"), after=_status("VmRSS"))
        return release() if trim else False

    def measured_run_unit(self, job):
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # the peak (VmHWM) restarts from the current resident size
        out = run_unit(self, job)
        print(
            f"unit {job.unit.index}: rss_before={before} peak={seen['hwm']} "
            f"rss_after={seen['after']} rss_after_release={_status('VmRSS')}",
            flush=True,
        )
        return out

    worker.release_memory = measured_release
    worker.UnitWorker.run_unit = measured_run_unit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unit", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="token budget of a batch (default: the extraction's; 0: none, as before issue 16)",
    )
    ap.add_argument("--every-unit", action="store_true", help="all units, one line each")
    ap.add_argument("--no-trim", action="store_true", help="keep the freed heap (--every-unit)")
    ap.add_argument("--out", required=True, help="a new run folder")
    args = ap.parse_args()
    restart_with_bounded_heap()  # as `hallugraph extract` does: the threshold from the start
    from hallugraph.data import load_dataset
    from hallugraph.extract import GenerationSettings
    from hallugraph.pipeline import run_extract

    k, n = args.unit, args.shard_size
    examples = load_dataset("triviaqa", num_samples=args.num_samples)
    if args.every_unit:
        _watch_units(trim=not args.no_trim)
    else:
        examples = examples[n * k : n * (k + 1)]
    run_extract(
        model="smollm2_135M",
        dataset="triviaqa",
        out=args.out,
        examples=examples,
        shard_size=n,
        settings=GenerationSettings(batch_tokens=args.batch_tokens),
        keep_tensors=False,
        progress=False,
    )
    hwm = _status("VmHWM")
    budget = GenerationSettings(batch_tokens=args.batch_tokens).token_budget()
    print(
        f"CPU: {cpu_name()}; "
        + ("every unit" if args.every_unit else f"unit {k}")
        + f" of the first {args.num_samples} TriviaQA questions; "
        f"batch token budget {budget or 'none'}"
    )
    print(f"peak_rss_kB={hwm}" + (" (since the last unit began)" if args.every_unit else ""))


if __name__ == "__main__":
    main()

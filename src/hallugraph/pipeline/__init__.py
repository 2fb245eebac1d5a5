"""Orchestration of the stages: dataset -> model -> extraction -> store (used by the CLI).

:func:`run_extract` plans a run in fixed units (:mod:`hallugraph.extract.units`) and has them
extracted by one :class:`~hallugraph.pipeline.worker.UnitWorker`: in this process, in each
actor of a Ray pool (``workers``, ``ray_address``; :mod:`hallugraph.extract.distributed`), or
only the units of one ``part`` of ``num_parts`` (other schedulers: SLURM arrays). The driver
publishes ``manifest.jsonl`` from the units' part files, in unit order; after parts,
:func:`merge_run` does (``hallugraph merge RUN``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tqdm.auto import tqdm

from hallugraph.data import DATASETS, Example, load_dataset
from hallugraph.extract import GenerationSettings
from hallugraph.extract.distributed import RayPool, UnitFailed
from hallugraph.extract.units import (
    PlanError,
    plan_units,
    read_part,
    select_part,
    unit_done,
    write_plan,
)
from hallugraph.models import HF_NAMES, LoadedModel, model_slug
from hallugraph.pipeline.summary import ExtractSummary
from hallugraph.pipeline.worker import UnitJob, UnitWorker, WorkerSpec, prefix_tokens
from hallugraph.store import StoreError, TraceStore, TraceWriter, check_codec, check_out_dir
from hallugraph.store.layout import RUN_INFO, clean_leftovers, read_json_file
from hallugraph.store.parts import Merged, adopt_rows, forget_units, merge_parts

__all__ = ["ExtractSummary", "merge_run", "prefix_tokens", "run_extract"]

log = logging.getLogger(__name__)

#: Traces per shard, and examples per unit of work: a worker holds one unit at most.
DEFAULT_SHARD_SIZE = 64
#: Seconds between two rewrites of the manifest while units finish (and once at the end).
MERGE_EVERY_S = 30.0


def dataset_name(name_or_path: str) -> str:
    return name_or_path if name_or_path in DATASETS else Path(name_or_path).stem


class _Local:
    """The units done one after another by one worker in this process (a :class:`RayPool`'s
    interface)."""

    def __init__(self, worker: UnitWorker) -> None:
        self.worker = worker

    def __enter__(self) -> _Local:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def call_one(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def run(self, method: str, items: Sequence[Any], on_result: Any) -> None:
        for item in items:
            on_result(item, getattr(self.worker, method)(item))


def run_extract(
    *,
    model: str,
    dataset: str,
    out: str | os.PathLike[str],
    num_samples: int | None = None,
    settings: GenerationSettings | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    dtype: str = "float16",
    data_dir: str | None = None,
    columns: Mapping[str, str] | None = None,
    quantize: str | None = None,
    model_dtype: str = "auto",
    device: str | None = None,
    lm: LoadedModel | None = None,
    progress: bool = True,
    answers_from: Mapping[str, str] | None = None,
    examples: Sequence[Example] | None = None,
    keep_tensors: bool = True,
    max_shard_mb: float | None = 4096.0,
    codec: str = "fp16",
    max_prompt_tokens: int | None = None,
    on_long_prompt: str = "skip",
    workers: int | None = None,
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    threads_per_worker: int = 1,
    num_parts: int = 1,
    part: int = 0,
    lm_factory: Any = None,
    retries: int = 3,
) -> ExtractSummary:
    """Answer ``num_samples`` questions of ``dataset`` and store their traces in ``out``.

    The planned examples are cut into units of ``shard_size`` (fixed from the start: not
    changed by what is done, by ``max_shard_mb`` or by the number of workers). A unit is
    written as one shard, or as several when its traces would pass ``max_shard_mb``; a worker
    holds at most one shard in memory. ``None`` lifts the cap.

    Where units run: in this process (default; ``lm`` or ``lm_factory()`` or the named model);
    on ``workers`` Ray actors of a local Ray started for the run, or of the cluster at
    ``ray_address`` (each loads the model with ``lm_factory`` or by name, uses
    ``threads_per_worker`` CPU threads and ``gpus_per_worker`` GPUs; a dead actor is restarted
    and its unit retried ``retries`` times); or only the units of part ``part`` of
    ``num_parts`` (then no manifest is written: :func:`merge_run` publishes the parts).

    Re-running with the same arguments resumes an interrupted run: units with a part file are
    done, the others are extracted again, whole. ``answers_from`` maps example ids to given
    answers that are teacher-forced instead of generated. ``examples`` replaces loading
    ``dataset`` (which then only names the run). With ``keep_tensors=False`` every registered
    statistic is computed by the worker for each shard it writes, and the shard's raw tensors
    are deleted (the manifest and the statistics stay). ``codec="predictive"`` stores fp16
    tensors losslessly as residuals of the model's own layer-by-layer prediction
    (:mod:`hallugraph.store.codec`; reading needs the model).

    Before any model compute, every prompt is checked against the model's context window
    (prompt + answer tokens, the answer counted as ``max_new_tokens`` when generated) and
    against ``max_prompt_tokens``: an example over either is skipped with an error row naming
    it and the excess (``on_long_prompt="skip"``) or the run is refused (``"refuse"``).
    On resume, shards whose data is missing or corrupt are found and their units extracted
    again (:meth:`TraceWriter.damaged_shards`).
    """
    t0 = time.perf_counter()
    settings = settings or GenerationSettings()
    settings.capture_mode()  # validate before anything slow
    settings.token_budget()
    check_codec(codec, dtype)
    if num_samples is not None and num_samples < 1:
        raise StoreError(f"--num-samples must be at least 1, not {num_samples}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise StoreError(f"--max-prompt-tokens must be at least 1, not {max_prompt_tokens}")
    if on_long_prompt not in ("skip", "refuse"):
        raise StoreError(f"--on-long-prompt must be skip or refuse, not {on_long_prompt!r}")
    if shard_size < 1:
        raise StoreError("--shard-size must be at least 1")
    if num_parts < 1 or not 0 <= part < num_parts:
        raise StoreError(f"--part must be in 0..{num_parts - 1} (--num-parts {num_parts})")
    distributed = workers is not None or ray_address is not None
    if distributed and lm is not None:
        raise StoreError("a model given as lm= runs in this process: give lm_factory= for workers")
    if workers is not None and workers < 1:
        raise StoreError(f"--workers must be at least 1, not {workers}")
    check_out_dir(out)  # before loading anything: a file, traces without run.json
    if codec == "predictive" and not keep_tensors:
        raise StoreError(
            "--codec predictive compresses the raw tensors that --keep-tensors no deletes: "
            "choose one of them"
        )
    if examples is None:
        examples = load_dataset(
            dataset, data_dir=data_dir, num_samples=num_samples, columns=columns
        )
    if answers_from:
        examples = [replace(e, answer=answers_from.get(e.id, e.answer)) for e in examples]
    if not examples:
        raise StoreError(f"{dataset}: no examples to extract")
    spec = WorkerSpec(
        run_dir=str(out),
        settings=settings,
        model=model,
        quantize=quantize,
        device=device or ("cuda" if gpus_per_worker > 0 else None),
        model_dtype=model_dtype,
        keep_tensors=keep_tensors,
        max_shard_mb=max_shard_mb,
        max_prompt_tokens=max_prompt_tokens,
        lm_factory=lm_factory,
    )
    if distributed:
        pool: Any = RayPool(
            partial(UnitWorker, spec),
            workers or 1,
            address=ray_address,
            gpus=gpus_per_worker,
            threads=threads_per_worker,
            retries=retries,
        )
    else:
        pool = _Local(UnitWorker(spec, lm))
    try:
        with pool:
            summary = _extract(
                pool,
                list(examples),
                Path(out),
                model=model,
                dataset=dataset,
                num_samples=num_samples,
                settings=settings,
                shard_size=shard_size,
                dtype=dtype,
                quantize=quantize,
                keep_tensors=keep_tensors,
                max_shard_mb=max_shard_mb,
                codec=codec,
                max_prompt_tokens=max_prompt_tokens,
                on_long_prompt=on_long_prompt,
                columns=columns,
                num_parts=num_parts,
                part=part,
                progress=progress,
            )
    except UnitFailed as err:
        raise StoreError(
            f"{err}. What is done is kept: re-run the same command to resume."
        ) from err
    summary.seconds = time.perf_counter() - t0
    return summary


def _extract(pool: Any, examples: list[Example], out: Path, **a: Any) -> ExtractSummary:
    desc = pool.call_one("describe", examples, a["codec"])
    too_long: dict[str, str] = desc["too_long"]
    if too_long and a["on_long_prompt"] == "refuse":
        shown = "; ".join(f"{qid}: {msg}" for qid, msg in list(too_long.items())[:5])
        more = f" (and {len(too_long) - 5} more)" if len(too_long) > 5 else ""
        raise StoreError(
            f"{len(too_long)} example(s) do not fit: {shown}{more}. Nothing was computed; "
            "--on-long-prompt skip extracts the others."
        )
    ids = [e.id for e in examples if e.id not in too_long]
    try:
        units = plan_units(ids, a["shard_size"])
    except ValueError as err:
        raise StoreError(f"{a['dataset']}: {err}") from err
    prefix = desc["prefix"]
    ds = dataset_name(a["dataset"])
    run_info = {
        "model": a["model"],
        "model_id": HF_NAMES.get(a["model"], a["model"]),
        "dataset": ds,
        "dataset_source": str(a["dataset"]),
        "num_samples": a["num_samples"],
        "generation": a["settings"].to_dict(),
        "quantize": a["quantize"],
        "keep_tensors": a["keep_tensors"],
        "model_dtype": desc["model_dtype"],
        "num_layers": desc["num_layers"],
        "num_heads": desc["num_heads"],
        "hidden_size": desc["hidden_size"],
        "max_shard_mb": a["max_shard_mb"],
        "device": desc["device"],
        "max_prompt_tokens": a["max_prompt_tokens"],
        "on_long_prompt": a["on_long_prompt"],
        "columns": dict(a["columns"]) if a["columns"] else None,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    driver = a["num_parts"] == 1  # the one process that publishes the manifest
    writer = TraceWriter(
        out,
        run_info,
        shard_name=f"{model_slug(a['model'])}_{ds}",
        shard_size=a["shard_size"],
        dtype=a["dtype"],
        prefix_tokens=prefix,
        codec=a["codec"],
        predictor=SimpleNamespace(**desc["codec"]) if "codec" in desc else None,
        clean=driver,
    )
    skipped = {q: f"{msg}; skipped before any compute" for q, msg in too_long.items()}
    write_plan(out, units, a["shard_size"], skipped)
    redone: dict[str, str] = {}
    if driver:  # a resumed run: adopt an older version's traces, redo damaged shards
        adopt_rows(out, units, writer.rows)
        redone = _redo_damaged(out, writer, merge_parts(out, units, skipped), a["keep_tensors"])
    if prefix and (
        not writer._shared_ready or (not driver and "shared_checksums" not in writer.info)
    ):
        writer.record_shared(pool.call_one("write_prefix", prefix))
    mine = select_part(units, a["num_parts"], a["part"])
    by_id = {e.id: e for e in examples}
    todo = [UnitJob(u, [by_id[q] for q in u.ids], prefix) for u in mine if not unit_done(out, u)]
    done = {"traces": 0, "errors": [], "shards": []}
    bar = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=f"extract {ds}" + (f" part {a['part']}/{a['num_parts']}" if not driver else ""),
        unit="unit",
        disable=not a["progress"],
    )
    last_merge = [time.monotonic()]

    def on_result(job: UnitJob, res: dict[str, Any]) -> None:
        done["traces"] += res["traces"]
        done["errors"] += res["errors"]
        done["shards"] += res["shards"]
        bar.update(1)
        bar.set_postfix(traces=done["traces"], errors=len(done["errors"]))
        if driver and time.monotonic() - last_merge[0] > MERGE_EVERY_S:
            merge_parts(out, units, skipped)
            last_merge[0] = time.monotonic()

    merged = Merged()
    try:
        pool.run("run_unit", todo, on_result)
    finally:
        bar.close()
        if driver:
            merged = merge_parts(out, units, skipped)
    messages = [f"{q}: {m}" for q, m in skipped.items()]
    messages += [f"{e['question_id']}: {e['error']}" for e in done["errors"]]
    summary = ExtractSummary(
        run_dir=out,
        processed=done["traces"],
        total=len(merged.rows),
        errors=len(messages),
        shards_written=done["shards"],
        sizes={},
        error_messages=messages,
        redone=redone,
        units=(sum(unit_done(out, u) for u in mine), len(mine)),
    )
    if driver:
        clean_leftovers(out)  # every unit has finished: no temporary file is being written
        summary.sizes = TraceStore(out, verify=False).disk_usage()
        if a["keep_tensors"] and merged.rows:
            S, L = merged.rows[0]["seq_len"], desc["num_layers"]
            summary.first_shapes = {
                "hidden_states": (L + 1, S, desc["hidden_size"]),
                "attentions": (L, desc["num_heads"], S, S),
                "tokens": (len(merged.rows[0]["tokens"]),),
            }
    else:
        summary.total = sum(len(read_part(out, u)["rows"]) for u in mine if read_part(out, u))
        summary.note = (
            f"Part {a['part']} of {a['num_parts']}: run `hallugraph merge {out}` once every "
            "part has finished (the manifest is written then)."
        )
    return summary


def _redo_damaged(out: Path, writer: TraceWriter, merged: Merged, keep_tensors: bool) -> dict:
    """Find the shards of done units whose data is missing or corrupt; their units are done
    again (shard renamed ``*.damaged``, statistics caches and part file deleted)."""
    if not merged.rows:
        return {}
    from hallugraph.detectors.registry import detector_statistics
    from hallugraph.features import cache_problem

    writer.rows = merged.rows
    writer.shards_done = list(dict.fromkeys(r["shard"] for r in merged.rows))
    # a pruned run: the statistics computed for it (a statistic added by a later version
    # has no folder yet and is not a reason to redo anything)
    computed = [n for n in detector_statistics() if (out / "stats" / n).is_dir()]
    bad = writer.damaged_shards([] if keep_tensors else computed, cache_problem)
    for shard, problem in bad.items():
        log.warning("damaged shard %s (%s): its unit is extracted again", shard, problem)
    writer.drop_shards(list(bad))
    forget_units(out, sorted({merged.shards[s] for s in bad if s in merged.shards}))
    return bad


def merge_run(run_dir: str | os.PathLike[str]) -> Merged:
    """Publish a run extracted in parts (``--num-parts K --part I``): ``manifest.jsonl`` and
    ``errors.jsonl`` from the part files, in unit order. Run it once every part has finished
    (it removes temporary files left by killed writers); ``missing`` lists units not done."""
    d = Path(run_dir)
    if not (d / RUN_INFO).exists():
        raise StoreError(f"{d} is not a hallugraph run (no {RUN_INFO})")
    read_json_file(d / RUN_INFO)
    clean_leftovers(d)
    try:
        return merge_parts(d)
    except PlanError as err:
        raise StoreError(str(err)) from err

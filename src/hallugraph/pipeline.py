"""Orchestration of the stages: dataset -> model -> extraction -> store (used by the CLI)."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hallugraph.data import DATASETS, Example, load_dataset
from hallugraph.extract import (
    GenerationSettings,
    Prepared,
    capture_batch,
    iter_batches,
    prepare,
    shared_prefix_len,
)
from hallugraph.extract.plan import prompt_problems
from hallugraph.models import HF_NAMES, LoadedModel, load_model, model_slug
from hallugraph.store import (
    StoreError,
    TraceStore,
    TraceWriter,
    check_codec,
    check_out_dir,
)
from hallugraph.store.sizing import estimate_trace_bytes, shard_chunks

log = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    run_dir: Path
    processed: int
    """Traces written by this invocation."""
    total: int
    """Traces in the run directory after this invocation."""
    errors: int
    shards_written: list[str]
    sizes: dict[str, int]
    first_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)
    """What went wrong for each failed example (``errors.jsonl`` has them too)."""
    redone: dict[str, str] = field(default_factory=dict)
    """Damaged shards found on resume (shard -> problem), whose traces were extracted again."""

    def render(self) -> str:
        mb = 1024 * 1024
        lines = [
            f"Run directory:        {self.run_dir}",
            f"Examples processed:   {self.processed} (run total {self.total})",
            f"Errors:               {self.errors}",
        ]
        shown = self.error_messages[:10]
        lines += [f"  {m}" for m in shown]
        if len(self.error_messages) > len(shown):
            lines.append(f"  ... {len(self.error_messages) - len(shown)} more in errors.jsonl")
        for shard, problem in self.redone.items():
            lines.append(f"Damaged shard redone: {shard} ({problem})")
        lines.append(f"Shards written:       {len(self.shards_written)}")
        for name, size in self.sizes.items():
            if name != "total":
                lines.append(f"  {name:<48} {size / mb:9.2f} MB")
        lines.append(f"Total size on disk:   {self.sizes.get('total', 0) / mb:.2f} MB")
        if self.total:
            lines.append(
                f"Per trace:            {self.sizes.get('total', 0) / mb / self.total:.3f} MB"
            )
        for key, shape in self.first_shapes.items():
            lines.append(f"First trace {key:<14} {shape}")
        lines.append(f"Wall time:            {self.seconds:.1f} s")
        return "\n".join(lines)


def dataset_name(name_or_path: str) -> str:
    return name_or_path if name_or_path in DATASETS else Path(name_or_path).stem


def prefix_tokens(lm: LoadedModel, prepared: list[Prepared], template: str | None) -> list[int]:
    """Tokens every prompt of this template starts with, whatever the data.

    Two probe examples with different one-character questions and contexts join the real
    prompts, so the prefix does not depend on which (or how many) examples are extracted.
    """
    if not prepared:
        return []
    has_ctx = prepared[0].example.context is not None
    probes = [
        Example(id=f"probe{c}", question=c, references=(), context=c if has_ctx else None)
        for c in ("0", "1")
    ]
    allp = prepared + prepare(lm, probes, template)
    return allp[0].prompt_ids[: shared_prefix_len(allp)]


def run_extract(
    *,
    model: str,
    dataset: str,
    out: str | os.PathLike[str],
    num_samples: int | None = None,
    settings: GenerationSettings | None = None,
    shard_size: int = 500,
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
) -> ExtractSummary:
    """Answer ``num_samples`` questions of ``dataset`` and store their traces in ``out``.

    A shard holds ``shard_size`` traces, or fewer when their estimated size would pass
    ``max_shard_mb`` (the traces of one shard are held in memory until it is written, and long
    RAG prompts make 500 of them ~10 GB); ``None`` lifts the cap.

    Re-running with the same arguments resumes an interrupted run. ``answers_from`` maps
    example ids to given answers that are teacher-forced instead of generated. ``examples``
    replaces loading ``dataset`` (which then only names the run). With ``keep_tensors=False``
    every registered statistic is computed for each shard as soon as it is written, and the
    shard's raw tensors are deleted (the manifest and the statistics stay).
    ``codec="predictive"`` stores fp16 tensors losslessly as residuals of the model's own
    layer-by-layer prediction (:mod:`hallugraph.store.codec`; reading needs the model).

    Before any model compute, every prompt is checked against the model's context window
    (prompt + answer tokens, the answer counted as ``max_new_tokens`` when generated) and
    against ``max_prompt_tokens``: an example over either is skipped with an error row naming
    it and the excess (``on_long_prompt="skip"``) or the run is refused (``"refuse"``).
    On resume, shards whose data is missing or corrupt are found and their traces extracted
    again (:meth:`TraceWriter.damaged_shards`).
    """
    t0 = time.perf_counter()
    settings = settings or GenerationSettings()
    settings.capture_mode()  # validate before anything slow
    check_codec(codec, dtype)
    if num_samples is not None and num_samples < 1:
        raise StoreError(f"--num-samples must be at least 1, not {num_samples}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise StoreError(f"--max-prompt-tokens must be at least 1, not {max_prompt_tokens}")
    if on_long_prompt not in ("skip", "refuse"):
        raise StoreError(f"--on-long-prompt must be skip or refuse, not {on_long_prompt!r}")
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
    if lm is None:
        lm = load_model(model, quantize=quantize, device=device, dtype=model_dtype)
    prepared = prepare(lm, examples, settings.template)
    too_long = prompt_problems(lm, prepared, settings.max_new_tokens, max_prompt_tokens)
    if too_long and on_long_prompt == "refuse":
        shown = "; ".join(f"{qid}: {msg}" for qid, msg in list(too_long.items())[:5])
        more = f" (and {len(too_long) - 5} more)" if len(too_long) > 5 else ""
        raise StoreError(
            f"{len(too_long)} example(s) do not fit: {shown}{more}. Nothing was computed; "
            "--on-long-prompt skip extracts the others."
        )
    prefix = prefix_tokens(lm, prepared, settings.template)
    cfg = lm.model.config
    predictor = None
    if codec == "predictive":
        from hallugraph.store.codec import Predictor

        predictor = Predictor(lm)
    run_info = {
        "model": model,
        "model_id": HF_NAMES.get(model, model),
        "dataset": dataset_name(dataset),
        "dataset_source": str(dataset),
        "num_samples": num_samples,
        "generation": settings.to_dict(),
        "quantize": quantize,
        "keep_tensors": keep_tensors,
        "model_dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        "num_layers": int(cfg.num_hidden_layers),
        "num_heads": int(cfg.num_attention_heads),
        "hidden_size": int(cfg.hidden_size),
        "max_shard_mb": max_shard_mb,
        "device": lm.device.type,
        "max_prompt_tokens": max_prompt_tokens,
        "on_long_prompt": on_long_prompt,
        "columns": dict(columns) if columns else None,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    writer = TraceWriter(
        out,
        run_info,
        shard_name=f"{model_slug(model)}_{dataset_name(dataset)}",
        shard_size=shard_size,
        dtype=dtype,
        prefix_tokens=prefix,
        codec=codec,
        predictor=predictor,
    )
    redone: dict[str, str] = {}
    if writer.rows:  # a resumed run: find shards lost or damaged since, and redo their traces
        from hallugraph.detectors.registry import detector_statistics
        from hallugraph.features import cache_problem

        # a pruned run: the statistics computed for it (a statistic added by a later version
        # has no folder yet and is not a reason to redo anything)
        stats_dir = Path(out) / "stats"
        computed = [n for n in detector_statistics() if (stats_dir / n).is_dir()]
        redone = writer.damaged_shards([] if keep_tensors else computed, cache_problem)
        for shard, problem in redone.items():
            log.warning("damaged shard %s (%s): its traces are extracted again", shard, problem)
        writer.drop_shards(list(redone))
    pending = []
    for p in prepared:
        if p.example.id in writer.done_ids:
            continue
        if p.example.id in too_long:
            writer.add_error(p.example.id, too_long[p.example.id] + "; skipped before any compute")
            continue
        pending.append(p)
    tdtype = getattr(torch, dtype)
    processed = 0
    pruned: list[str] = []
    if not keep_tensors:  # a resumed run may hold shards written just before a kill
        for shard in writer.shards_done:
            if (Path(out) / "shards" / shard).exists():
                _prune(Path(out), shard)
    bar = tqdm(
        total=len(pending), desc=f"extract {dataset_name(dataset)}", unit="ex", disable=not progress
    )

    def trace_bytes(p: Prepared) -> int:
        # the plain fp16 size; a predictive block is never larger (raw fallback) + 28 bytes
        answer = len(p.answer_ids) if p.answer_ids is not None else settings.max_new_tokens
        return estimate_trace_bytes(
            len(p.prompt_ids) + answer,
            len(prefix),
            run_info["num_layers"],
            run_info["num_heads"],
            run_info["hidden_size"],
            tdtype.itemsize,
        )

    cap = None if max_shard_mb is None else int(max_shard_mb * 1024 * 1024)
    for chunk in shard_chunks(pending, shard_size, trace_bytes, cap):
        encoded: dict[str, Any] = {}
        for batch in iter_batches(chunk, settings.batch_size):
            for p, trace in _capture_with_fallback(lm, batch, settings, writer, prefix):
                if trace is not None:
                    encoded[p.example.id] = _encode(writer, trace, tdtype)
            bar.update(len(batch))
            bar.set_postfix(errors=writer.errors)
        for p in chunk:  # dataset order inside a shard, whatever the batching
            if p.example.id in encoded:
                writer.append(encoded.pop(p.example.id))
                processed += 1
        writer.flush()
        if not keep_tensors:
            for shard in writer.shards_written[len(pruned) :]:
                _prune(Path(out), shard)
                pruned.append(shard)
    bar.close()
    writer.close()
    store = TraceStore(out, model=predictor)
    shapes: dict[str, tuple[int, ...]] = {}
    if len(store) and keep_tensors:
        first = store[0]
        shapes = {k: tuple(first[k].shape) for k in ("hidden_states", "attentions")}
        shapes["tokens"] = (len(first["tokens"]),)
    return ExtractSummary(
        run_dir=Path(out),
        processed=processed,
        total=len(store),
        errors=writer.errors,
        shards_written=writer.shards_written,
        sizes=store.disk_usage(),
        first_shapes=shapes,
        seconds=time.perf_counter() - t0,
        error_messages=writer.error_messages,
        redone=redone,
    )


def _prune(run_dir: Path, shard: str) -> None:
    """Compute every statistic of a freshly written shard, then delete its raw tensors.

    Only for fp16 runs: ``--codec predictive`` with ``--keep-tensors no`` is refused.
    """
    from hallugraph.detectors.registry import detector_statistics
    from hallugraph.features import compute_stats

    compute_stats(run_dir, detector_statistics(), shards=[shard], progress=False)
    (run_dir / "shards" / shard).unlink()


def _encode(writer: TraceWriter, trace, dtype) -> Any:
    """Cast with torch (much faster than numpy's fp32 -> fp16), then hand to the store."""
    prefix = None
    if trace.row_start:
        prefix = (trace.prefix_hidden.to(dtype).numpy(), trace.prefix_attentions.to(dtype).numpy())
    return writer.encode(
        trace.meta,
        trace.hidden_states.to(dtype).numpy(),
        trace.attentions.to(dtype).numpy(),
        row_start=trace.row_start,
        prefix=prefix,
    )


def _capture_with_fallback(lm, batch, settings, writer, prefix=()):
    """Capture a batch; if it fails, retry one example at a time and record the failures."""
    if len(batch) > 1:
        try:
            return list(zip(batch, capture_batch(lm, batch, settings, prefix), strict=True))
        except Exception:  # noqa: BLE001 - one bad example must not stop the run
            pass
    results = []
    for p in batch:
        try:
            results.append((p, capture_batch(lm, [p], settings, prefix)[0]))
        except Exception as err:  # noqa: BLE001
            writer.add_error(p.example.id, f"{type(err).__name__}: {err}")
            results.append((p, None))
    return results

"""The worker side of an extraction: one model, units of work done one at a time.

:class:`UnitWorker` is what runs in the single process and in each Ray actor alike: it
describes the model and the prompts (:meth:`~UnitWorker.describe`), writes the shared prefix
(:meth:`~UnitWorker.write_prefix`) and extracts a unit (:meth:`~UnitWorker.run_unit`): its
shard(s), then (``--keep-tensors no``) their statistics and the deletion of their raw tensors,
then its part file, last. A worker holds at most one shard's traces in memory.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hallugraph.config import bound_heap, glibc
from hallugraph.data import Example
from hallugraph.extract import (
    GenerationSettings,
    Prepared,
    capture_batch,
    prepare,
    prompt_problems,
    shared_prefix_len,
)
from hallugraph.extract.capture import prefix_rows
from hallugraph.extract.units import Unit, write_part
from hallugraph.models import LoadedModel, load_model
from hallugraph.store import TraceStore, TraceWriter
from hallugraph.store.layout import RUN_INFO, SHARD_DIR, read_json_file
from hallugraph.store.parts import unit_shard_name
from hallugraph.store.sizing import estimate_trace_bytes, shard_chunks


@dataclass
class WorkerSpec:
    """What a worker needs to build itself (sent to every Ray actor: keep it small)."""

    run_dir: str
    settings: GenerationSettings
    model: str = "smollm2_135M"
    quantize: str | None = None
    device: str | None = None
    model_dtype: str = "auto"
    keep_tensors: bool = True
    max_shard_mb: float | None = 4096.0
    max_prompt_tokens: int | None = None
    lm_factory: Callable[[], LoadedModel] | None = None
    """Builds the model instead of :func:`hallugraph.models.load_model` (tests)."""

    def load(self) -> LoadedModel:
        if self.lm_factory is not None:
            return self.lm_factory()
        return load_model(
            self.model, quantize=self.quantize, device=self.device, dtype=self.model_dtype
        )


@dataclass
class UnitJob:
    """One unit to extract: its examples (answers given or not) and the run's prompt prefix."""

    unit: Unit
    examples: list[Example]
    prefix: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return f"unit {self.unit.index} ({len(self.unit.ids)} examples)"


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


class UnitWorker:
    """Extracts units of a run with one model (``lm``, else ``spec.load()``)."""

    def __init__(self, spec: WorkerSpec, lm: LoadedModel | None = None) -> None:
        bound_heap()  # before the model loads: its temporaries are mapped, then unmapped
        self.spec = spec
        self.lm = lm if lm is not None else spec.load()
        self._predictor: Any = None

    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            from hallugraph.store.codec import Predictor

            self._predictor = Predictor(self.lm)
        return self._predictor

    def describe(self, examples: Sequence[Example], codec: str = "fp16") -> dict[str, Any]:
        """The model's shapes, the run's prompt prefix and the examples whose prompt does not
        fit (``too_long``: id -> why), before any model compute."""
        lm, gs = self.lm, self.spec.settings
        prepared = prepare(lm, list(examples), gs.template)
        cfg = lm.model.config
        out = {
            "too_long": prompt_problems(
                lm, prepared, gs.max_new_tokens, self.spec.max_prompt_tokens
            ),
            "prefix": prefix_tokens(lm, prepared, gs.template),
            "model_dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
            "num_layers": int(cfg.num_hidden_layers),
            "num_heads": int(cfg.num_attention_heads),
            "hidden_size": int(cfg.hidden_size),
            "device": lm.device.type,
        }
        if codec == "predictive":
            out["codec"] = {
                "fingerprint": self.predictor.fingerprint,
                "kernel": self.predictor.kernel,
            }
        return out

    def _writer(self, prefix: Sequence[int]) -> TraceWriter:
        info = read_json_file(Path(self.spec.run_dir) / RUN_INFO)
        predictor = self.predictor if info.get("codec") == "predictive" else None
        return TraceWriter.for_unit(self.spec.run_dir, prefix, predictor)

    def write_prefix(self, prefix: Sequence[int]) -> dict[str, str]:
        """Write the shared prefix file; returns its checksums (the driver records them)."""
        hidden, attn = prefix_rows(self.lm, prefix, self.spec.settings)
        return self._writer(prefix).save_shared(hidden.numpy(), attn.numpy())

    def run_unit(self, job: UnitJob) -> dict[str, Any]:
        """Extract one unit; returns a summary (no tensors): traces, errors, shards."""
        gs, lm = self.spec.settings, self.lm
        writer = self._writer(job.prefix)
        info = writer.info
        tdtype = getattr(torch, info["dtype"])
        prepared = prepare(lm, job.examples, gs.template)

        def trace_bytes(p: Prepared) -> int:
            # the plain fp16 size; a predictive block is never larger (raw fallback) + 28 bytes
            answer = len(p.answer_ids) if p.answer_ids is not None else gs.max_new_tokens
            return estimate_trace_bytes(
                len(p.prompt_ids) + answer,
                len(job.prefix),
                info["num_layers"],
                info["num_heads"],
                info["hidden_size"],
                tdtype.itemsize,
            )

        mb = self.spec.max_shard_mb
        cap = None if mb is None else int(mb * 1024 * 1024)
        rows: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        shards: list[str] = []
        chunks = shard_chunks(prepared, len(prepared) or 1, trace_bytes, cap)
        for piece, chunk in enumerate(chunks):
            encoded: dict[str, Any] = {}
            for batch in gs.batches(chunk):
                for p, trace in _capture_with_fallback(lm, batch, gs, errors, job.prefix):
                    if trace is not None:
                        encoded[p.example.id] = _encode(writer, trace, tdtype)
            ordered = [encoded.pop(p.example.id) for p in chunk if p.example.id in encoded]
            if ordered:  # dataset order inside a shard, whatever the batching
                name = unit_shard_name(info["shard_name"], job.unit.index, piece)
                rows += writer.write_shard(name, ordered)
                shards.append(name)
            del ordered, encoded
        if not self.spec.keep_tensors and shards:
            _prune(Path(self.spec.run_dir), shards, rows)
        write_part(self.spec.run_dir, job.unit, rows, errors, shards)
        release_memory()
        return {"unit": job.unit.index, "traces": len(rows), "errors": errors, "shards": shards}


def release_memory() -> bool:
    """Return the heap a unit freed to the system (glibc's ``malloc_trim``; elsewhere a no-op,
    ``False``).

    A unit frees most of what it allocated, but glibc keeps the freed mid-sized blocks resident
    (~560 MB after a unit of 64 TriviaQA questions on the default model, measured): the next
    unit's peak then sits on top of that slack, and a long run's peak crept up with the
    number of units done (issue 16). Trimming after each unit costs milliseconds.
    """
    gc.collect()
    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _prune(run_dir: Path, shards: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Compute every statistic of a unit's fresh shards, then delete their raw tensors.

    Only for fp16 runs: ``--codec predictive`` with ``--keep-tensors no`` is refused.
    """
    from hallugraph.detectors.registry import detector_statistics
    from hallugraph.features import compute_stats

    store = TraceStore(run_dir, rows=rows)  # the unit's rows: the manifest does not have them yet
    compute_stats(store, detector_statistics(), shards=shards, progress=False)
    for shard in shards:
        os.unlink(run_dir / SHARD_DIR / shard)


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


def _capture_with_fallback(lm, batch, settings, errors: list[dict[str, str]], prefix=()):
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
            errors.append({"question_id": p.example.id, "error": f"{type(err).__name__}: {err}"})
            results.append((p, None))
    return results

"""Gctx, RS and CS of every trace of a run, from attribution graphs (``hallugraph groundedness
RUN``), stored beside the run for the ``groundedness`` statistic and detectors.

**Which engine.** ``engine="hallugraph"`` (default): :mod:`hallugraph.attribution.engine`, plain
PyTorch, the same graphs as circuit-tracer 0.5.0 (tested), no circuit-tracer / nnsight needed;
``engine="circuit-tracer"``: circuit-tracer's nnsight backend (extra ``attribution``), kept for
cross-checks. Both are driven the same way below.

**Which traces.** Those with a context span (``context_span`` in the manifest: the retrieved
document's token span in the prompt, e.g. HaluEval-QA); a run without any is refused.

**Which graph.** The sequence attributed is the trace's own tokens (``tokens`` = prompt +
answer, as extracted), starting with the BOS (:func:`~hallugraph.attribution.tracer.
attribution_tokens`), and the logit attributed is the *actual* answer token (not the model's
top guesses), with its probability as the logit weight. Graphs attribute logits at the last
position of the sequence only (as circuit-tracer 0.5.0 does: ``attribute`` computes every
target at ``n_pos - 1``; ``attribution_targets`` picks which vocabulary entries, not where), so
answer token ``k`` is attributed from the prefix ``prompt + answer[:k]``:

* ``targets="first"`` (default): one graph, prefix = the prompt, target = the first answer
  token (the answer's commitment);
* ``targets="all"``: one graph per answer content token (the answer without its final
  end-of-turn token; at most ``max_answer_tokens``), prefix = prompt + the answer before it;
  Gctx, RS and CS are the means over those graphs (NaN-aware). Our engine builds them from one
  shared attribution (:mod:`~hallugraph.attribution.prefix_scores`: equal to float rounding,
  ~2x less CPU; records say ``"path": "shared"``); ``shared_prefixes=False``
  (``--separate-prefixes``): one attribution per token (records without ``path``).

The context positions are the span's tokens shifted by the BOS when one is prepended; Gctx
leaves out position 0 (:func:`~hallugraph.attribution.scores.scores_from_graph`).

**Storage, resume.** ``RUN/attribution/groundedness.json`` (format in
:mod:`hallugraph.features.groundedness`), keyed by trace id, with the settings the graphs were
built with. The file is replaced atomically after every ``save_every`` traces (default 1) and
when the command stops for any reason, so an interruption loses at most the trace in progress;
running again skips the traces already scored. Settings that change the scores (transcoders,
node budget, targets, dtype) must match the stored ones (``overwrite=True`` discards them). One
process per file: two processes scoring the same run would overwrite each other's file, except
with ``shard=(k, n)`` (``--shard K/N``): process ``k`` of ``n`` takes every ``n``-th trace from
the ``k``-th (after ``limit``), skips those already in the main file, and writes
``groundedness.shard-K-of-N.json``; :func:`merge_shards` then folds the shards into the main
file (settings checked).
"""

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hallugraph.attribution.engine import AttributionEngine
from hallugraph.attribution.prefix_scores import shared_scores
from hallugraph.attribution.scores import GraphScores, scores_from_graph, trace_record
from hallugraph.attribution.settings import (
    MATCHING,
    TARGETS,
    AttributionSettings,
    load_for_run,
    resolve_transcoders,
    transcoders_digest,
)
from hallugraph.attribution.tracer import attribute_tokens, attribution_tokens
from hallugraph.features.groundedness import SCORES_FILE, read_scores, scores_path, write_scores
from hallugraph.features.logits import answer_content
from hallugraph.store import TraceStore

log = logging.getLogger(__name__)


def context_rows(store: TraceStore) -> list[dict[str, Any]]:
    """Manifest rows of the traces that have a context span, in run order."""
    return [r for r in store.manifest if r.get("context_span")]


def answer_offsets(
    row: Mapping[str, Any], targets: str = "first", max_answer_tokens: int | None = None
) -> list[int]:
    """Offsets ``k`` in the answer of the tokens attributed (see the module docstring)."""
    if int(row.get("answer_len", 0)) < 1:
        raise ValueError(f"trace {row.get('question_id')} has no answer token to attribute")
    if targets == "first":
        return [0]
    if targets != "all":
        raise ValueError(f"targets must be one of {', '.join(TARGETS)}, not {targets!r}")
    ks = list(range(answer_content(row).stop))
    return ks[:max_answer_tokens] if max_answer_tokens else ks


def attribute_answer_token(
    replacement_model: Any,
    row: Mapping[str, Any],
    k: int = 0,
    *,
    max_feature_nodes: int | None = 64,
    batch_size: int = 64,
) -> tuple[Any, list[int], int]:
    """The graph of answer token ``k`` of a trace: ``(graph, context positions, shift)``.

    Attributes ``tokens[: prompt_len + k]`` (BOS first) with the actual token
    ``tokens[prompt_len + k]`` as the only logit target, with ``replacement_model`` an
    :class:`~hallugraph.attribution.engine.AttributionEngine` or a circuit-tracer
    ``ReplacementModel``.
    """
    span = row.get("context_span")
    if not span:
        raise ValueError(f"trace {row.get('question_id')} has no context span")
    tokens = [int(t) for t in row["tokens"]]
    p = int(row["prompt_len"])
    if not 0 <= k < int(row["answer_len"]):
        raise ValueError(f"answer token {k} out of range: the answer has {row['answer_len']}")
    ids, shift = attribution_tokens(replacement_model.tokenizer, tokens[: p + k])
    target = torch.tensor([tokens[p + k]], dtype=torch.long)
    kw = {"max_feature_nodes": max_feature_nodes, "batch_size": batch_size}
    if isinstance(replacement_model, AttributionEngine):
        graph = replacement_model.attribute(ids, attribution_targets=target, **kw)
    else:
        graph = attribute_tokens(replacement_model, ids, attribution_targets=target, **kw)
    return graph, [i + shift for i in range(int(span[0]), int(span[1]))], shift


def score_trace_budgets(
    engine: AttributionEngine,
    row: Mapping[str, Any],
    settings: AttributionSettings,
    budgets: Sequence[int],
) -> dict[int, dict[str, Any]]:
    """:func:`score_trace`'s record for every node budget in ``budgets`` from one run per
    graph at the largest budget: the smaller budgets' graphs are its prefixes
    (:meth:`~hallugraph.attribution.engine.AttributionGraph.prefix`, exactly the graphs of
    separate runs). ``seconds`` is the shared run's; our engine only (circuit-tracer's graphs
    do not keep the exploration order)."""
    if not isinstance(engine, AttributionEngine):
        raise TypeError("score_trace_budgets needs hallugraph's AttributionEngine")
    if not budgets or min(budgets) < 1:
        raise ValueError(f"budgets must be positive node counts, not {list(budgets)}")
    t0 = time.perf_counter()
    per: dict[int, list[GraphScores]] = {b: [] for b in budgets}
    probs: list[float] = []
    for k in answer_offsets(row, settings.targets, settings.max_answer_tokens):
        graph, ctx, _ = attribute_answer_token(
            engine, row, k, max_feature_nodes=max(budgets), batch_size=settings.batch_size
        )
        for b in budgets:
            per[b].append(scores_from_graph(graph.prefix(b), ctx))
        probs.append(float(graph.logit_probabilities[0]))
        del graph
    seconds = round(time.perf_counter() - t0, 3)
    return {b: trace_record(row, s, probs, seconds) for b, s in per.items()}


def stored_settings(settings: AttributionSettings, tdir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``settings`` entry of a scores file made with ``settings`` and the set ``tdir``."""
    return {
        **settings.to_dict(),
        "transcoders": str(tdir),
        "transcoders_digest": transcoders_digest(tdir),
        "exclude_positions": [0],
    }


def score_trace(
    replacement_model: Any,
    row: Mapping[str, Any],
    settings: AttributionSettings,
    *,
    shared: bool = False,
) -> dict[str, Any]:
    """The stored record of one trace: Gctx, RS, CS (means over its graphs), mean feature
    nodes per graph, context positions, number of graphs, mean target probability, wall seconds
    and ``cpu_s`` (this process's CPU seconds: the trace's own with one thread, whatever else
    runs on the machine); ``shared``: several answer tokens' graphs from one attribution."""
    t0, c0 = time.perf_counter(), time.process_time()
    scores: list[GraphScores] = []
    probs: list[float] = []
    ks = answer_offsets(row, settings.targets, settings.max_answer_tokens)
    if shared and len(ks) > 1 and isinstance(replacement_model, AttributionEngine):
        kw = {"max_feature_nodes": settings.max_feature_nodes, "batch_size": settings.batch_size}
        scores, probs = shared_scores(replacement_model, row, ks, **kw)
        rec = trace_record(row, scores, probs, round(time.perf_counter() - t0, 3), c0)
        return {**rec, "path": "shared"}
    for k in ks:
        graph, ctx, _ = attribute_answer_token(
            replacement_model,
            row,
            k,
            max_feature_nodes=settings.max_feature_nodes,
            batch_size=settings.batch_size,
        )
        scores.append(scores_from_graph(graph, ctx))
        probs.append(float(graph.logit_probabilities[0]))
        del graph
    return trace_record(row, scores, probs, round(time.perf_counter() - t0, 3), c0)


# ---------------------------------------------------------------------------------------------
# a run


@dataclass
class GroundednessSummary:
    """What :func:`score_run` did."""

    path: Path
    eligible: int
    """Traces with a context (within ``limit``)."""
    already: int
    """Scored by an earlier invocation (skipped)."""
    scored: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(question_id, error)`` of traces that could not be scored (retried next time)."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "eligible": self.eligible,
            "already": self.already,
            "scored": self.scored,
            "failed": len(self.failed),
            "seconds": round(self.seconds, 1),
        }


def _check_settings(stored: Mapping[str, Any] | None, new: Mapping[str, Any], n: int, path: Path):
    if not stored or not n:
        return
    diff = [k for k in MATCHING if stored.get(k) != new.get(k)]
    if diff:
        raise ValueError(
            f"{path} holds {n} scores made with other settings ({', '.join(diff)} differ: "
            + ", ".join(f"{k}={stored.get(k)!r}" for k in diff)
            + "); re-run with those settings to resume, or --overwrite to discard them"
        )


def score_run(
    run: str | os.PathLike[str],
    transcoders: str | os.PathLike[str] | None = None,
    settings: AttributionSettings | None = None,
    *,
    model: str | os.PathLike[str] | None = None,
    device: str | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    first: Sequence[str] | None = None,
    overwrite: bool = False,
    save_every: int = 1,
    progress: bool = True,
    replacement_model: Any = None,
    log_fn: Callable[[str], None] | None = None,
    shared_prefixes: bool | None = None,
) -> GroundednessSummary:
    """Score every trace of ``run`` that has a context (the first ``limit`` of them) and is not
    scored yet; see the module docstring. ``replacement_model`` skips loading one (it must be
    the run's model with ``transcoders``). ``first``: trace ids scored before the others, in
    that order (the answers a report needs first), applied before ``limit`` and ``shard``.
    ``shared_prefixes``: ``targets="all"`` graphs from one shared attribution per trace
    (:func:`score_trace`'s ``shared``, records with ``"path": "shared"``); ``None``: for
    ``targets="all"`` with our engine.

    Raises ``ValueError`` (nothing written) when the run has no context, the transcoder set is
    missing, or the stored scores were made with other settings; ``ImportError`` when
    ``settings.engine`` is ``circuit-tracer`` and it is not installed.
    """
    t_start = time.perf_counter()
    settings = settings or AttributionSettings()
    say = log_fn or (lambda msg: log.info("%s", msg))
    store = TraceStore(run)
    rows = context_rows(store)
    if not rows:
        raise ValueError(
            f"{store.dir} (dataset {store.info.get('dataset')!r}) has no trace with a context "
            "span: Gctx needs a retrieved context (e.g. a HaluEval-QA run)"
        )
    if first:
        rank = {q: k for k, q in enumerate(first)}
        known = {r["question_id"] for r in rows}
        unknown = [q for q in rank if q not in known]
        if unknown:
            raise ValueError(
                f"{len(unknown)} trace id(s) to score first are not traces with a context in "
                f"{store.dir} (e.g. {unknown[0]!r})"
            )
        rows = sorted(rows, key=lambda r: rank.get(r["question_id"], len(rank)))  # stable
    if limit is not None:
        rows = rows[: max(int(limit), 0)]
    fname, in_main = SCORES_FILE, set()
    if shard is not None:
        k, n = shard
        if not 0 <= k < n:
            raise ValueError(f"shard {k}/{n}: K must lie in 0..N-1")
        rows, fname = rows[k::n], shard_file(k, n)
        in_main = set(read_scores(store.dir)["scores"])
    tdir = resolve_transcoders(transcoders, str(store.info.get("model", "")))
    path = scores_path(store.dir, fname)
    payload = read_scores(store.dir, fname)
    new_settings = stored_settings(settings, tdir)
    if overwrite:
        payload["scores"] = {}
    _check_settings(payload.get("settings"), new_settings, len(payload["scores"]), path)
    payload["settings"] = new_settings
    done = payload["scores"]
    todo = [r for r in rows if r["question_id"] not in done and r["question_id"] not in in_main]
    summary = GroundednessSummary(path, len(rows), len(rows) - len(todo), 0)
    if not todo:
        if overwrite:
            write_scores(store.dir, payload, fname)
        summary.seconds = time.perf_counter() - t_start
        return summary

    if replacement_model is None:
        if settings.engine == "circuit-tracer":
            from hallugraph.attribution.tracer import require_circuit_tracer

            require_circuit_tracer()
        t0 = time.perf_counter()
        replacement_model = load_for_run(
            store, tdir, model=model, device=device, dtype=settings.dtype, engine=settings.engine
        )
        say(f"{settings.engine} model loaded in {time.perf_counter() - t0:.1f} s ({tdir})")
    shared = shared_prefixes is not False and settings.targets == "all"
    dirty = 0
    bar = tqdm(total=len(todo), desc="groundedness", unit="trace", disable=not progress)
    try:
        for row in todo:
            qid = row["question_id"]
            try:
                rec = score_trace(replacement_model, row, settings, shared=shared)
            except (ValueError, RuntimeError) as err:  # one bad trace must not stop the run
                summary.failed.append((qid, f"{type(err).__name__}: {err}"))
                log.warning("trace %s failed: %s", qid, err)
                bar.update(1)
                continue
            done[qid] = rec
            summary.scored += 1
            dirty += 1
            if dirty >= save_every:
                write_scores(store.dir, payload, fname)
                dirty = 0
            bar.update(1)
            bar.set_postfix(gctx=f"{rec['gctx']:.3f}", s=f"{rec['seconds']:.1f}")
    finally:
        bar.close()
        if dirty or overwrite:
            write_scores(store.dir, payload, fname)
    summary.seconds = time.perf_counter() - t_start
    return summary


def shard_file(k: int, n: int) -> str:
    """File name of shard ``k`` of ``n`` beside ``groundedness.json``."""
    return f"groundedness.shard-{k}-of-{n}.json"


def merge_shards(run: str | os.PathLike[str], n: int) -> int:
    """Fold the ``n`` shard files of ``run`` into ``groundedness.json`` (settings must agree
    with each other and with the main file's); returns the number of records added. The shard
    files are kept (re-merging is a no-op)."""
    store_dir = Path(run)
    main = read_scores(store_dir)
    added = 0
    for k in range(n):
        part = read_scores(store_dir, shard_file(k, n))
        if not part["scores"]:
            continue
        base = main.get("settings") if main["scores"] else None
        _check_settings(base, part["settings"], len(main["scores"]), scores_path(store_dir))
        main["settings"] = part["settings"]
        for qid, rec in part["scores"].items():
            added += qid not in main["scores"]
            main["scores"][qid] = rec
    if added:
        write_scores(store_dir, main)
    return added

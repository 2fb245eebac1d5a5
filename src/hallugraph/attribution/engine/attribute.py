"""Attribution graphs without circuit-tracer: :class:`AttributionEngine`.

``AttributionEngine.from_pretrained(model_dir, transcoders_dir).attribute(tokens, ...)`` builds
the graph circuit-tracer 0.5.0's ``attribute`` builds for the same model, transcoders, prompt and
settings (``max_n_logits``, ``desired_logit_prob``, ``max_feature_nodes``, ``batch_size``,
``update_interval``), the same way:

1. the tokens start with a special token (one is prepended as circuit-tracer's
   ``ensure_tokenized`` does); one eager forward (:func:`~.model.frozen_forward`);
2. logit targets: the given token ids, or the top ``max_n_logits`` of the last position's
   softmax cut where the cumulative probability reaches ``desired_logit_prob``; each target's
   vector is its unembedding row minus the mean row, its weight its probability;
3. every transcoder encoded, features and errors at position 0 zeroed, and the logit rows
   (:func:`~.sweep.prepare_with_logit_rows`: their sweep needs no feature, so it runs first
   and each layer is read while its decoder rows are at hand);
4. feature rows in circuit-tracer's order of selection: rank the active
   features by their influence on the logits through the rows computed so far
   (:meth:`~.rows.RowStore.influence`, ``torch.argsort(…, descending=True)`` as circuit-tracer
   calls it), take the next ``update_interval · batch_size`` unvisited ones (fewer at the end of
   the budget), compute their rows, re-rank; with a budget of every active feature, all of
   them in index order. Rows do not depend on how they are batched, so the queue between two
   rankings is computed in chunks of ``chunk_size`` sorted by layer and position. The last
   queue's rows are ranked by nothing: they are computed for the selected features' columns
   only (when the budget is small against the active features);
5. the adjacency in circuit-tracer's node order (:mod:`~.graph`).

Ties: features whose influences are exactly equal (e.g. two features with identical weights)
are ordered as ``torch.argsort(descending=True)`` orders them, which is not a stable sort (not
by index); both engines make that call on influence vectors equal at those entries, and keep the
same member of a tie cut by the budget (tested with duplicated features). Influences that
differ only by rounding (the engines sum in different orders, ~1e-7 relative) may be ordered
differently, which can swap a feature at the edge of a ranking step.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from hallugraph.attribution.engine.graph import AttributionGraph, GraphConfig, LogitTarget
from hallugraph.attribution.engine.model import (
    frozen_forward,
    linear_weights,
    load_hf_model,
)
from hallugraph.attribution.engine.rows import RowStore
from hallugraph.attribution.engine.sweep import (
    compute_rows,
    encoder_rows,
    prepare_with_logit_rows,
)
from hallugraph.attribution.engine.transcoders import EngineTranscoders, load_transcoders

__all__ = ["AttributionEngine", "logit_targets"]

log = logging.getLogger(__name__)

#: the last queue's rows are computed for the selected columns only when the budget is at most
#: 1 / _NARROW_BELOW of the active features (else the full rows cost about as much)
_NARROW_BELOW = 4


def logit_targets(
    logits: torch.Tensor,
    unembed: torch.Tensor,
    tokenizer: Any,
    targets: Sequence[int] | torch.Tensor | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
) -> tuple[list[LogitTarget], torch.Tensor, torch.Tensor]:
    """``(targets, probabilities, demeaned unembedding rows)`` as circuit-tracer picks them."""
    probs = torch.softmax(logits, dim=-1)
    if targets is None:
        top_p, top_idx = torch.topk(probs, max_n_logits)
        cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_logit_prob)) + 1
        idx = top_idx[:cutoff]
    else:
        idx = torch.as_tensor(targets, dtype=torch.long).reshape(-1).to(logits.device)
        if len(idx) == 0:
            raise ValueError("attribution_targets is empty")
        bad = (idx < 0) | (idx >= logits.shape[0])
        if bad.any():
            raise ValueError(
                f"target token ids must lie in [0, {logits.shape[0]}): {idx[bad].tolist()}"
            )
    vecs = unembed[idx] - unembed.mean(dim=0, keepdim=True)
    named = [LogitTarget(tokenizer.decode(i), i) for i in idx.tolist()]
    return named, probs[idx], vecs


class _Clock:
    """Wall and CPU seconds per phase (``clock("name")`` adds the time since the last call)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._t, self._c = time.perf_counter(), time.process_time()

    def __call__(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + cpu - self._c
        self._t, self._c = now, cpu


class AttributionEngine:
    """A Llama-family model with per-layer transcoders, attributing prompts (module docstring).

    ``tokenizer`` is public (as on circuit-tracer's ``ReplacementModel``).
    """

    def __init__(self, model: Any, tokenizer: Any, transcoders: EngineTranscoders) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.transcoders = transcoders
        self.weights = linear_weights(model)
        self.cfg = GraphConfig.from_hf(model.config)
        self.last_timings: dict[str, float] = {}
        """Wall seconds per phase of the last :meth:`attribute` call."""
        self.last_cpu_timings: dict[str, float] = {}
        """CPU seconds (``time.process_time``) per phase of the last :meth:`attribute` call."""
        if transcoders.n_layers != self.weights.n_layers:
            raise ValueError(
                f"{transcoders.path}: {transcoders.n_layers} transcoders for a model with "
                f"{self.weights.n_layers} layers"
            )
        d = int(transcoders.layers[0].W_enc.shape[1])
        if d != self.weights.d_model:
            raise ValueError(
                f"{transcoders.path}: transcoders of width d={d}, the model has "
                f"d_model={self.weights.d_model}"
            )

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike[str],
        transcoders_dir: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> AttributionEngine:
        """Load a local HF checkpoint and a transcoder set (circuit-tracer's format)."""
        model, tokenizer = load_hf_model(model_dir, device=device, dtype=dtype)
        return cls(model, tokenizer, load_transcoders(transcoders_dir, device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return self.weights.embed.device

    def ensure_tokenized(self, tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``tokens`` as a 1-D tensor starting with a special token (circuit-tracer's rule)."""
        t = torch.as_tensor(tokens, dtype=torch.long).squeeze()
        if t.ndim != 1 or len(t) == 0:
            raise ValueError(f"expected a non-empty 1-D token sequence, got shape {tuple(t.shape)}")
        tok = self.tokenizer
        if int(t[0]) in tok.all_special_ids:
            return t
        cands = [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, *tok.all_special_ids]
        bos = next(filter(None, cands), None)
        return t if bos is None else torch.cat([torch.tensor([bos]), t])

    @torch.no_grad()
    def attribute(
        self,
        tokens: Sequence[int] | torch.Tensor,
        *,
        attribution_targets: Sequence[int] | torch.Tensor | None = None,
        max_n_logits: int = 10,
        desired_logit_prob: float = 0.95,
        batch_size: int = 512,
        max_feature_nodes: int | None = None,
        update_interval: int = 4,
        chunk_size: int = 64,
        verbose: bool = False,
    ) -> AttributionGraph:
        """The attribution graph of ``tokens`` (see the module docstring)."""
        if batch_size < 1 or update_interval < 1 or chunk_size < 1:
            raise ValueError("batch_size, update_interval and chunk_size must be at least 1")
        t0 = time.perf_counter()
        ids = self.ensure_tokenized(tokens)
        w, tc = self.weights, self.transcoders
        clock = _Clock()
        cache = frozen_forward(self.model, ids)
        clock("forward")
        targets, probs, vecs = logit_targets(
            cache.last_logits,
            w.unembed,
            self.tokenizer,
            attribution_targets,
            max_n_logits,
            desired_logit_prob,
        )
        prep, feats, et = prepare_with_logit_rows(cache, w, tc, ids, vecs)
        clock("prepare_and_logit_rows")
        n_layers, n_active, n_logits = prep.n_layers, prep.n_features, len(targets)
        budget = min(max_feature_nodes or n_active, n_active)
        store = RowStore(prep.offsets, prep.row_size, budget + n_logits, self.device, vecs.dtype)
        log.info("%d active features, %d logit targets, budget %d", n_active, n_logits, budget)
        minus = torch.full((n_logits,), -1)
        store.add(torch.full((n_logits,), n_layers), minus, torch.arange(n_logits), feats, et)
        clock("logit_rows_store")
        visited = torch.zeros(n_active, dtype=torch.bool)
        order: list[torch.Tensor] = []
        n_visited = 0
        bar = tqdm(total=budget, desc="feature rows", unit="row", disable=not verbose)
        extra = None
        while n_visited < budget:
            if budget == n_active:
                pending = torch.arange(n_active)
            else:
                infl = store.influence(probs).cpu()
                rank = torch.argsort(infl[:n_active], descending=True)
                size = min(update_interval * batch_size, budget - n_visited)
                pending = rank[~visited[rank]][:size]
                clock("ranking")
            visited[pending] = True
            order.append(pending)
            n_visited += len(pending)
            if n_visited == budget and budget * _NARROW_BELOW <= n_active:
                # the last queue: nothing ranks these rows, the graph keeps only the
                # selected features' columns of them
                extra = self._rows(prep, cache, None, pending, chunk_size, torch.where(visited)[0])
            else:
                self._rows(prep, cache, store, pending, chunk_size)
            clock("feature_rows")
            bar.update(len(pending))
        bar.close()
        selected = torch.where(visited)[0]
        adjacency = store.assemble(selected, n_logits, extra)
        clock("assemble")
        self.last_timings, self.last_cpu_timings = clock.seconds, clock.cpu_seconds
        log.info("attribution done in %.2f s: %s", time.perf_counter() - t0, clock.seconds)
        order_t = None if budget == n_active else torch.cat(order)
        return self.graph_of(ids, prep, selected, adjacency, targets, probs, order_t)

    def graph_of(
        self,
        ids: torch.Tensor,
        prep: Any,
        selected: torch.Tensor,
        adjacency: torch.Tensor,
        targets: list[LogitTarget],
        probs: torch.Tensor,
        selection_order: torch.Tensor | None,
    ) -> AttributionGraph:
        """The :class:`AttributionGraph` of the tokens ``ids`` from their prepared features
        ``prep`` and the computed adjacency (:meth:`attribute`, and the shared prefixes of
        :func:`~.prefixes.attribute_prefixes`)."""
        return AttributionGraph(
            input_string=self.tokenizer.decode(ids),
            input_tokens=ids,
            active_features=torch.stack([prep.feat_layer, prep.feat_pos, prep.feat_idx], 1),
            activation_values=prep.values.cpu(),
            selected_features=selected,
            adjacency_matrix=adjacency.cpu(),
            logit_targets=targets,
            logit_probabilities=probs.cpu(),
            vocab_size=int(self.tokenizer.vocab_size),
            cfg=self.cfg,
            scan=self.transcoders.scan,
            selection_order=selection_order,
        )

    def _rows(
        self,
        prep,
        cache,
        store: RowStore | None,
        pending: torch.Tensor,
        chunk: int,
        columns: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Compute the rows of the features ``pending`` (sorted by layer, position) and add
        them to ``store``; with ``columns`` (and no store), return ``(nodes, feats [R,
        len(columns)], et)`` for those columns only."""
        if store is not None:
            prep.keep_decoders()  # full rows, read chunk after chunk
        key = prep.feat_layer[pending] * (prep.n_pos + 1) + prep.feat_pos[pending]
        pending = pending[torch.argsort(key, descending=True, stable=True)]
        out = []
        for s in range(0, len(pending), chunk):
            idx = pending[s : s + chunk]
            lay, pos = prep.feat_layer[idx], prep.feat_pos[idx]
            feats, et = compute_rows(
                prep,
                cache,
                self.weights,
                self.transcoders,
                lay,
                pos,
                encoder_rows(prep, self.transcoders, idx),
                columns,
            )
            if store is None:
                out.append((idx, feats, et))
            else:
                store.add(lay, idx, torch.full((len(idx),), -1), feats, et)
        if store is not None:
            return None
        return tuple(torch.cat(parts) for parts in zip(*out, strict=True))  # type: ignore[return-value]

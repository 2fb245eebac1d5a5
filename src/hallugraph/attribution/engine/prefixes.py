"""Several logit targets of one sequence, each at the end of its own prefix, attributed together:
:func:`attribute_prefixes` (``AttributionEngine.attribute_prefixes``).

``targets=all`` explains answer token ``k`` from the prefix ``prompt + answer[:k]``: one graph
per prefix, each what ``engine.attribute(tokens[:end], attribution_targets=[token])`` builds.
The prefixes are nested and the model is causal, so most of the work is the same:

* **one forward** over the longest prefix (positions ``< n`` are those of every prefix of
  length ``n``), with the logits at each prefix's last position;
* **one encoding** of every transcoder at every position, and the error vectors: a prefix's
  active features are the first ``pos_starts[l, n]`` features of each layer's block
  (:func:`prefix_view`);
* **the logit rows in one sweep** (a row injected at position ``n - 1`` is zero after it);
* **feature rows**: the row of a feature (its direct effects from upstream nodes) depends on
  neither the logit explained nor the positions after the feature's own. Rows computed in full
  for one target's ranking steps are kept and reused by the other targets; the last queue of
  every target (rows nothing ranks, see :mod:`~.attribute`) is computed once for the union of
  the targets' last queues, for the columns of the union of their selected features only.

Each target then ranks, selects and assembles exactly as :meth:`AttributionEngine.attribute`
does, on its own prefix's node layout.

**Not bit-identical** to the separate calls: the longer forward's attention sums ``P·V`` over
more keys, which rounds differently (~1e-7 relative; the linear layers, the softmax and the
encodings are row-for-row the same), and rows batched with other rows round differently. The
graphs agree to that rounding; a feature whose influence ties with another's to rounding, or a
JumpReLU pre-activation at its threshold to rounding, can swap a selected feature.
``benchmarks/groundedness_all_speed.py`` measures the difference on real answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hallugraph.attribution.engine import attribute as _attr
from hallugraph.attribution.engine.graph import AttributionGraph
from hallugraph.attribution.engine.model import frozen_forward
from hallugraph.attribution.engine.prepared import Prepared
from hallugraph.attribution.engine.rows import RowStore
from hallugraph.attribution.engine.sweep import compute_rows, encoder_rows, prepare

__all__ = ["attribute_prefixes", "prefix_view"]


def prefix_view(prep: Prepared, n: int) -> tuple[Prepared, torch.Tensor]:
    """``prep`` restricted to positions ``< n`` (what :func:`~.sweep.prepare` gives for the
    prefix's own forward, up to rounding), and the indices in ``prep`` of its active
    features."""
    if not 1 <= n <= prep.n_pos:
        raise ValueError(f"a prefix of {n} positions of a sequence of {prep.n_pos}")
    n_layers = prep.n_layers
    starts = prep.offsets[:-1]
    stops = [s + int(prep.pos_starts[lay, n]) for lay, s in enumerate(starts)]
    sub = torch.cat([torch.arange(s, e) for s, e in zip(starts, stops, strict=True)])
    offsets = [0]
    for s, e in zip(starts, stops, strict=True):
        offsets.append(offsets[-1] + e - s)
    view = Prepared(
        n_layers=n_layers,
        n_pos=n,
        feat_layer=prep.feat_layer[sub],
        feat_pos=prep.feat_pos[sub],
        feat_idx=prep.feat_idx[sub],
        values=prep.values[sub.to(prep.values.device)],
        w_dec=prep.w_dec,
        offsets=offsets,
        pos_starts=prep.pos_starts[:, : n + 1].clone(),
        errors=prep.errors[:, :n],
        token_vectors=prep.token_vectors[:n],
        scale_ln1=prep.scale_ln1[:, :n],
        scale_ln2=prep.scale_ln2[:, :n],
        scale_final=prep.scale_final[:n],
    )
    return view, sub


@dataclass
class _Target:
    """One prefix's attribution in progress."""

    end: int
    prep: Prepared
    sub: torch.Tensor  # its active features' indices in the full Prepared
    et_cols: torch.Tensor  # its error + token columns in the full Prepared's rows
    store: RowStore
    budget: int
    visited: torch.Tensor
    order: list[torch.Tensor]
    last: torch.Tensor | None = None  # the last queue (prefix indices): rows nothing ranks


class _Rows:
    """Feature rows of the full sequence, computed once and kept (index in the full Prepared ->
    features up to the row's layer, errors + tokens)."""

    def __init__(self, engine: Any, full: Prepared, cache: Any, chunk: int) -> None:
        self.engine, self.full, self.cache, self.chunk = engine, full, cache, chunk
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.computed = 0

    def _batches(self, nodes: torch.Tensor):
        """``nodes`` sorted by (layer, position), descending, in chunks (as ``_rows`` does)."""
        full = self.full
        key = full.feat_layer[nodes] * (full.n_pos + 1) + full.feat_pos[nodes]
        nodes = nodes[torch.argsort(key, descending=True, stable=True)]
        for s in range(0, len(nodes), self.chunk):
            idx = nodes[s : s + self.chunk]
            enc = encoder_rows(full, self.engine.transcoders, idx)
            yield idx, full.feat_layer[idx], full.feat_pos[idx], enc

    def ensure(self, nodes: torch.Tensor) -> None:
        """Compute and keep the full rows of ``nodes`` not kept yet."""
        todo = torch.tensor([int(f) for f in nodes.tolist() if int(f) not in self.kept])
        if not len(todo):
            return
        full, off = self.full, self.full.offsets
        full.keep_decoders()  # full rows, read chunk after chunk
        w, tc = self.engine.weights, self.engine.transcoders
        for idx, lay, pos, enc in self._batches(todo):
            feats, et = compute_rows(full, self.cache, w, tc, lay, pos, enc)
            for r, (f, layer) in enumerate(zip(idx.tolist(), lay.tolist(), strict=True)):
                self.kept[f] = (feats[r, : off[layer]].clone(), et[r].clone())
            self.computed += len(idx)

    def gather(
        self, nodes: torch.Tensor, columns: torch.Tensor, et_cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept rows of ``nodes`` at the feature ``columns`` and error + token ``et_cols`` (all
        indices in the full Prepared)."""
        feats = torch.zeros(len(nodes), len(columns), dtype=self.full.errors.dtype)
        et = torch.zeros(len(nodes), len(et_cols), dtype=feats.dtype)
        for r, f in enumerate(nodes.tolist()):
            row, e = self.kept[int(f)]
            inside = columns < len(row)
            feats[r, inside] = row[columns[inside]].cpu()
            et[r] = e[et_cols].cpu()
        return feats.to(self.full.errors.device), et.to(self.full.errors.device)

    def narrow(self, nodes: torch.Tensor, columns: torch.Tensor) -> dict[int, tuple]:
        """Rows of ``nodes`` for the feature ``columns`` only (ascending): ``{node: (features
        [len(columns)], errors + tokens)}``, not kept."""
        w, tc = self.engine.weights, self.engine.transcoders
        out: dict[int, tuple] = {}
        for idx, lay, pos, enc in self._batches(nodes):
            feats, et = compute_rows(self.full, self.cache, w, tc, lay, pos, enc, columns)
            out.update({f: (feats[r], et[r]) for r, f in enumerate(idx.tolist())})
            self.computed += len(idx)
        return out


def _et_columns(n_layers: int, n_pos_full: int, n: int) -> torch.Tensor:
    """A prefix of ``n`` positions' error + token columns in the full sequence's rows."""
    return (torch.arange(n_layers + 1)[:, None] * n_pos_full + torch.arange(n)[None, :]).reshape(-1)


@torch.no_grad()
def attribute_prefixes(
    engine: Any,
    tokens: Sequence[int] | torch.Tensor,
    ends: Sequence[int],
    targets: Sequence[int],
    *,
    batch_size: int = 512,
    max_feature_nodes: int | None = None,
    update_interval: int = 4,
    chunk_size: int = 64,
) -> list[AttributionGraph]:
    """For each ``j``: the graph of ``tokens[: ends[j]]`` with the vocabulary id
    ``targets[j]`` as its only logit target, i.e. ``engine.attribute(tokens[: ends[j]],
    attribution_targets=[targets[j]], ...)``, up to rounding (module docstring). A BOS
    prepended by :meth:`~AttributionEngine.ensure_tokenized` shifts every end by one."""
    if batch_size < 1 or update_interval < 1 or chunk_size < 1:
        raise ValueError("batch_size, update_interval and chunk_size must be at least 1")
    if len(ends) != len(targets) or not len(ends):
        raise ValueError(f"{len(ends)} prefix ends for {len(targets)} targets (one each, ≥ 1)")
    raw = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    ids = engine.ensure_tokenized(raw)
    ends = [int(e) + len(ids) - len(raw) for e in ends]
    if min(ends) < 1 + len(ids) - len(raw) or max(ends) > len(ids):
        raise ValueError(f"prefix ends must lie in [1, {len(raw)}], got {list(ends)}")
    w, tc = engine.weights, engine.transcoders
    clock = _attr._Clock()
    n_full = max(ends)
    ids = ids[:n_full]
    cache = frozen_forward(engine.model, ids, [e - 1 for e in ends])
    clock("forward")
    full = prepare(cache, w, tc, ids)
    clock("prepare")
    assert cache.position_logits is not None
    picked = [
        _attr.logit_targets(cache.position_logits[j], w.unembed, engine.tokenizer, [t])
        for j, t in enumerate(targets)
    ]
    vecs = torch.cat([p[2] for p in picked])
    m, n_layers = len(ends), full.n_layers
    lf, le = compute_rows(
        full, cache, w, tc, torch.full((m,), n_layers), torch.tensor(ends) - 1, vecs
    )
    clock("logit_rows")
    rows = _Rows(engine, full, cache, chunk_size)
    states = []
    for j, end in enumerate(ends):
        prep, sub = prefix_view(full, end)
        n_active = prep.n_features
        budget = min(max_feature_nodes or n_active, n_active)
        st = _Target(
            end=end,
            prep=prep,
            sub=sub,
            et_cols=_et_columns(n_layers, n_full, end),
            store=RowStore(prep.offsets, prep.row_size, budget + 1, engine.device, vecs.dtype),
            budget=budget,
            visited=torch.zeros(n_active, dtype=torch.bool),
            order=[],
        )
        dev = lf.device
        st.store.add(
            torch.tensor([n_layers]),
            torch.tensor([-1]),
            torch.tensor([0]),
            lf[j : j + 1, sub.to(dev)],
            le[j : j + 1, st.et_cols.to(dev)],
        )
        _explore(st, rows, picked[j][1], update_interval * batch_size)
        states.append(st)
    clock("ranking_and_full_rows")
    extras = _last_queues(states, rows)
    clock("last_queue_rows")
    graphs = []
    for st, (named, probs, _), extra in zip(states, picked, extras, strict=True):
        selected = torch.where(st.visited)[0]
        adjacency = st.store.assemble(selected, 1, extra)
        prep = st.prep
        order = None if st.budget == prep.n_features else torch.cat(st.order)
        ids_k = ids[: st.end]
        graphs.append(engine.graph_of(ids_k, prep, selected, adjacency, named, probs, order))
    clock("assemble")
    engine.last_timings, engine.last_cpu_timings = clock.seconds, clock.cpu_seconds
    return graphs


def _explore(st: _Target, rows: _Rows, probs: torch.Tensor, step: int) -> None:
    """The target's ranking loop (as ``attribute``'s): every queue but the last gets full rows
    (kept, shared) into its store; the last queue is left in ``st.last``."""
    n_active = st.prep.n_features
    n_visited = 0
    while n_visited < st.budget:
        if st.budget == n_active:
            pending = torch.arange(n_active)
        else:
            infl = st.store.influence(probs).cpu()
            rank = torch.argsort(infl[:n_active], descending=True)
            pending = rank[~st.visited[rank]][: min(step, st.budget - n_visited)]
        st.visited[pending] = True
        st.order.append(pending)
        n_visited += len(pending)
        if n_visited == st.budget:
            st.last = pending
            return
        nodes = st.sub[pending]
        rows.ensure(nodes)
        feats, et = rows.gather(nodes, st.sub, st.et_cols)
        lay = st.prep.feat_layer[pending]
        st.store.add(lay, pending, torch.full((len(pending),), -1), feats, et)


def _last_queues(states: list[_Target], rows: _Rows) -> list[tuple | None]:
    """Every target's last queue: rows of the union of the queues, for the columns of the union
    of the selected features only (full rows when those are most of the features, or kept)."""
    queues = [st.sub[st.last] for st in states if st.last is not None]
    if not queues:
        return [None] * len(states)
    union = torch.unique(torch.cat(queues))
    columns = torch.unique(torch.cat([st.sub[torch.where(st.visited)[0]] for st in states]))
    todo = torch.tensor([int(f) for f in union.tolist() if int(f) not in rows.kept])
    narrow: dict[int, tuple] = {}
    if len(todo):
        if len(columns) * _attr._NARROW_BELOW <= rows.full.n_features:
            narrow = rows.narrow(todo, columns)
        else:
            rows.ensure(todo)
    out: list[tuple | None] = []
    for st in states:
        if st.last is None:
            out.append(None)
            continue
        nodes, sel = st.sub[st.last], st.sub[torch.where(st.visited)[0]]
        feats = torch.zeros(len(nodes), len(sel), dtype=rows.full.errors.dtype)
        et = torch.zeros(len(nodes), len(st.et_cols), dtype=feats.dtype)
        where = torch.searchsorted(columns, sel)
        for r, f in enumerate(nodes.tolist()):
            if f in narrow:
                nf, ne = narrow[f]
                feats[r], et[r] = nf[where].cpu(), ne[st.et_cols].cpu()
            else:
                one = torch.tensor([f])
                kf, ke = rows.gather(one, sel, st.et_cols)
                feats[r], et[r] = kf[0].cpu(), ke[0].cpu()
        dev = rows.full.errors.device
        out.append((st.last, feats.to(dev), et.to(dev)))
    return out

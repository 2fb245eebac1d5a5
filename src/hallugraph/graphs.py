"""Attention maps as token graphs: one directed graph per trace and layer.

The idea (attention as a graph over tokens; e.g. LapEigvals, Binkowski et al. 2025, and
CHARM's attention graphs with hidden-state node features): at layer ``l`` every token is a
node, and the softmax weight ``A[i, j]`` with which query token ``i`` reads key token ``j`` is a
directed edge ``j -> i`` (source = key, target = query: the direction information flows). Under
the causal mask ``j <= i``, so the graph is a DAG plus self-loops.

:func:`build_graph` turns a stored trace (the dict of :class:`hallugraph.store.TraceStore`)
and a layer into an :class:`AttentionGraph`:

* **nodes** — one per token, in sequence order: token id, token string, position, role
  (:func:`token_roles`), and the hidden state as node features (``hidden="output"``:
  ``hidden_states[layer + 1]``, what layer ``layer`` writes; ``"input"``: ``hidden_states[layer]``,
  what its attention reads);
* **edges** — ``heads="mean"``: one scalar weight, the mean of the heads' weights;
  ``heads="all"``: the vector of every head's weight. Edges of weight exactly 0 (the causal
  upper triangle, fp16 underflow) are never edges;
* **pruning** — ``threshold`` keeps the edges whose mean-over-heads weight is ``>= threshold``;
  ``top_k`` then keeps, for each target (query), its ``k`` heaviest incoming edges (ties: the
  earlier key first). Both select by the mean-over-heads weight, so ``heads="mean"`` and
  ``heads="all"`` keep the same edge set. ``self_loops=False`` drops the ``i -> i`` edges.

Edges are listed in row-major order of the attention map: by target, then by source.

Exports: :meth:`AttentionGraph.to_networkx` (``networkx.DiGraph``) and
:meth:`AttentionGraph.to_pyg` (``torch_geometric.data.Data``); :func:`draw_arc_diagram` draws
one graph as an arc diagram (the CLI's ``hallugraph graph``).

**Roles** (:func:`token_roles`; ids are indices into :data:`ROLES`), by decreasing precedence:

* ``answer`` — positions ``>= prompt_len`` (exact);
* ``context`` — positions inside ``context_span`` (exact; the retrieved document of RAG
  datasets, located from the tokenizer's offsets at extraction);
* ``question`` — the prompt tokens that overlap the last occurrence of the trace's
  ``question`` in the prompt, found in the concatenated ``tokens_decoded`` with whitespace
  ignored (sentencepiece pieces decode without their leading space) and every run of
  non-ASCII characters of the question matching any text (a character split over several
  byte-level tokens decodes as replacement characters). Not found: no question tokens;
* ``system`` — the system turn of the chat template, from its opening marker to its closing
  marker inclusive, the first pair of :data:`SYSTEM_MARKERS` found in the prompt (ChatML
  ``<|im_start|>system ... <|im_end|>`` as SmolLM2 and Qwen, Llama 3
  ``<|start_header_id|>system<|end_header_id|> ... <|eot_id|>``, Llama 2 ``<<SYS>> ...
  <</SYS>>``, Phi-3 ``<|system|> ... <|end|>``); none without a system turn;
* ``prompt`` — every other prompt token: chat markup of the user and assistant turns,
  instruction, template words such as ``Context:`` and ``Question:``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import networkx
    import torch_geometric.data

__all__ = [
    "ROLES",
    "ROLE_IDS",
    "SYSTEM_MARKERS",
    "AttentionGraph",
    "build_graph",
    "token_roles",
    "draw_arc_diagram",
]

ROLES: tuple[str, ...] = ("system", "prompt", "context", "question", "answer")
"""Node roles; a node's ``role_id`` is the index of its role here."""
ROLE_IDS: dict[str, int] = {r: i for i, r in enumerate(ROLES)}

SYSTEM_MARKERS: tuple[tuple[str, str], ...] = (
    ("<|im_start|>system", "<|im_end|>"),
    ("<|start_header_id|>system<|end_header_id|>", "<|eot_id|>"),
    ("<<SYS>>", "<</SYS>>"),
    ("<|system|>", "<|end|>"),
)
"""(opening, closing) markers of a chat template's system turn, whitespace removed."""

HeadsMode = Literal["mean", "all"]


# ---------------------------------------------------------------------------------------------
# roles


def _compact(pieces: Sequence[str]) -> tuple[str, np.ndarray]:
    """The concatenated pieces without whitespace, and the piece each character comes from."""
    chars: list[str] = []
    owner: list[int] = []
    for k, piece in enumerate(pieces):
        for ch in piece:
            if not ch.isspace():
                chars.append(ch)
                owner.append(k)
    return "".join(chars), np.asarray(owner, dtype=np.int64)


def _needle_pattern(text: str) -> re.Pattern[str] | None:
    """Regex for ``text`` with whitespace removed and each non-ASCII run matching anything."""
    compact = "".join(ch for ch in text if not ch.isspace())
    if not any(ch.isascii() for ch in compact):
        return re.compile(re.escape(compact)) if compact else None
    parts = re.split(r"([^\x00-\x7f]+)", compact)
    regex = "".join((".+?" if i % 2 else re.escape(p)) for i, p in enumerate(parts) if p or i % 2)
    return re.compile(regex, re.DOTALL)


def _find_span(compact: str, owner: np.ndarray, needle: str | None) -> tuple[int, int] | None:
    """Token span ``[start, end)`` of the last match of ``needle`` in the compact text."""
    if not needle or not compact:
        return None
    pattern = _needle_pattern(needle)
    if pattern is None:
        return None
    last = None
    for m in pattern.finditer(compact):
        if m.end() > m.start():
            last = m
    if last is None:
        return None
    return int(owner[last.start()]), int(owner[last.end() - 1]) + 1


def _system_span(compact: str, owner: np.ndarray) -> tuple[int, int] | None:
    for opening, closing in SYSTEM_MARKERS:
        start = compact.find(opening)
        if start < 0:
            continue
        end = compact.find(closing, start + len(opening))
        if end < 0:
            continue
        return int(owner[start]), int(owner[end + len(closing) - 1]) + 1
    return None


def token_roles(trace: Mapping[str, Any]) -> np.ndarray:
    """Role id (index into :data:`ROLES`) of every token of a trace, ``[S]`` int64.

    Reads ``tokens`` (or ``seq_len``), ``prompt_len``, ``context_span``, ``tokens_decoded`` and
    ``question``; the rule is in the module docstring.
    """
    S = int(trace["seq_len"]) if "seq_len" in trace else len(trace["tokens"])
    P = min(int(trace["prompt_len"]), S)
    roles = np.full(S, ROLE_IDS["prompt"], dtype=np.int64)
    decoded = trace.get("tokens_decoded")
    pieces = [str(p) for p in (decoded if decoded is not None else [])][:P]
    if len(pieces) == P and P:
        compact, owner = _compact(pieces)
        sys_span = _system_span(compact, owner)
        if sys_span:
            roles[sys_span[0] : sys_span[1]] = ROLE_IDS["system"]
        q_span = _find_span(compact, owner, trace.get("question"))
        if q_span:
            roles[q_span[0] : q_span[1]] = ROLE_IDS["question"]
    span = trace.get("context_span")
    if span:
        start, end = max(int(span[0]), 0), min(int(span[1]), P)
        if end > start:
            roles[start:end] = ROLE_IDS["context"]
    roles[P:] = ROLE_IDS["answer"]
    return roles


# ---------------------------------------------------------------------------------------------
# graphs


@dataclass
class AttentionGraph:
    """One layer's attention graph of one trace (see the module docstring).

    ``edge_index`` ``[2, E]`` holds (source = key, target = query) positions; ``edge_attr`` is
    ``[E]`` (``heads="mean"``) or ``[E, heads]`` (``heads="all"``); ``weight`` ``[E]`` is always
    the mean-over-heads weight. ``x`` ``[S, hidden]`` is ``None`` when the trace has no hidden
    states.
    """

    layer: int
    heads: str
    tokens: np.ndarray
    token_strings: list[str]
    roles: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray
    weight: np.ndarray
    x: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """``question_id``, ``question``, ``answer``, ``label`` (when known), ``prompt_len``,
    ``answer_len``, ``context_span``."""

    @property
    def num_nodes(self) -> int:
        return len(self.roles)

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def role_names(self) -> list[str]:
        return [ROLES[r] for r in self.roles]

    def to_networkx(self) -> networkx.DiGraph:
        """A ``networkx.DiGraph``: node attributes ``token``, ``text``, ``position``, ``role``,
        ``role_id`` (and ``x``, the hidden state, when known); edge attribute ``weight`` (mean
        over heads) and, with ``heads="all"``, ``heads`` (one weight per head); graph attributes
        ``layer``, ``heads`` and the trace's metadata."""
        import networkx as nx

        g = nx.DiGraph(layer=self.layer, heads=self.heads, **self.meta)
        for i in range(self.num_nodes):
            attrs: dict[str, Any] = {
                "token": int(self.tokens[i]),
                "text": self.token_strings[i],
                "position": i,
                "role": ROLES[self.roles[i]],
                "role_id": int(self.roles[i]),
            }
            if self.x is not None:
                attrs["x"] = self.x[i]
            g.add_node(i, **attrs)
        src, dst = self.edge_index
        if self.edge_attr.ndim == 1:
            g.add_weighted_edges_from(
                zip(src.tolist(), dst.tolist(), self.weight.tolist(), strict=True)
            )
        else:
            g.add_edges_from(
                (s, d, {"weight": w, "heads": tuple(h)})
                for s, d, w, h in zip(
                    src.tolist(),
                    dst.tolist(),
                    self.weight.tolist(),
                    self.edge_attr.tolist(),
                    strict=True,
                )
            )
        return g

    def to_pyg(self) -> torch_geometric.data.Data:
        """A ``torch_geometric.data.Data``: ``x`` ``[S, hidden]`` (float32), ``edge_index``
        ``[2, E]`` (long, source = key, target = query), ``edge_attr`` ``[E, 1]`` (mean) or
        ``[E, heads]`` (all), ``edge_weight`` ``[E]`` (mean over heads), ``role`` ``[S]`` (role
        ids), ``token`` and ``position`` ``[S]``, ``y`` ``[1]`` (the label, when known),
        ``layer``; ``text`` is the list of token strings."""
        import torch
        from torch_geometric.data import Data

        attr = self.edge_attr if self.edge_attr.ndim == 2 else self.edge_attr[:, None]
        data = Data(
            x=None if self.x is None else torch.from_numpy(np.ascontiguousarray(self.x)),
            edge_index=torch.from_numpy(np.ascontiguousarray(self.edge_index, dtype=np.int64)),
            edge_attr=torch.from_numpy(np.ascontiguousarray(attr, dtype=np.float32)),
            edge_weight=torch.from_numpy(np.ascontiguousarray(self.weight, dtype=np.float32)),
            role=torch.from_numpy(self.roles.astype(np.int64)),
            token=torch.from_numpy(np.asarray(self.tokens, dtype=np.int64)),
            position=torch.arange(self.num_nodes, dtype=torch.long),
            num_nodes=self.num_nodes,
        )
        data.layer = self.layer
        data.text = list(self.token_strings)
        if self.meta.get("label") is not None:
            data.y = torch.tensor([int(self.meta["label"])], dtype=torch.long)
        return data


def _layer_index(layer: int, num_layers: int) -> int:
    if not -num_layers <= layer < num_layers:
        raise ValueError(
            f"layer {layer} out of range: the trace has {num_layers} layers (0..{num_layers - 1})"
        )
    return layer % num_layers


def build_graph(
    trace: Mapping[str, Any],
    layer: int,
    *,
    heads: HeadsMode = "mean",
    threshold: float | None = None,
    top_k: int | None = None,
    self_loops: bool = True,
    hidden: Literal["output", "input"] = "output",
    hide_sink: bool = False,
) -> AttentionGraph:
    """The attention graph of ``trace`` at ``layer`` (negative counts from the end).

    Needs ``attentions`` ``[L, heads, S, S]``; ``hidden_states`` ``[L+1, S, H]`` is optional
    (node features). ``hide_sink`` drops the edges out of token 0 (the attention sink, which
    takes most of every row's weight in deep layers) before ``threshold`` and ``top_k`` select,
    so a drawing shows the informative edges; weights are not renormalized. Raises
    ``ValueError`` on a bad layer, mode or pruning parameter, and when the trace has no
    attention maps (e.g. read from a pruned run).
    """
    if heads not in ("mean", "all"):
        raise ValueError(f"heads must be 'mean' or 'all', not {heads!r}")
    if hidden not in ("output", "input"):
        raise ValueError(f"hidden must be 'output' or 'input', not {hidden!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, not {top_k}")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, not {threshold}")
    if trace.get("attentions") is None:
        raise ValueError(
            "the trace has no attention maps (read with fields excluding 'attentions', or its "
            "run was pruned); re-extract with --keep-tensors yes"
        )
    attn_all = trace["attentions"]
    num_layers = int(attn_all.shape[0])
    layer = _layer_index(int(layer), num_layers)
    attn = np.asarray(attn_all[layer], dtype=np.float64)  # [heads, S, S]
    S = attn.shape[-1]
    score = attn.mean(axis=0)
    mask = np.tril(score > 0)
    if not self_loops:
        np.fill_diagonal(mask, False)
    if hide_sink:
        mask[:, 0] = False
    if threshold is not None:
        mask &= score >= threshold
    if top_k is not None and top_k < S:
        masked = np.where(mask, score, -np.inf)
        order = np.argsort(-masked, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(S)[None, :].repeat(S, axis=0), axis=1)
        mask &= rank < top_k
    q, k = np.nonzero(mask)  # row-major: by target (query), then source (key)
    weight = score[q, k].astype(np.float32)
    edge_attr = weight if heads == "mean" else attn[:, q, k].T.astype(np.float32)

    x = None
    hs = trace.get("hidden_states")
    if hs is not None:
        x = np.asarray(hs[layer + 1 if hidden == "output" else layer], dtype=np.float32)
    tokens = np.asarray(trace.get("tokens", np.zeros(S)), dtype=np.int64)
    decoded = trace.get("tokens_decoded")
    strings = [str(s) for s in decoded] if decoded is not None else [""] * S
    meta = {
        "question_id": trace.get("question_id"),
        "question": trace.get("question"),
        "answer": trace.get("generated_answer_clean"),
        "label": trace.get("label"),
        "prompt_len": int(trace["prompt_len"]),
        "answer_len": int(trace.get("answer_len", S - int(trace["prompt_len"]))),
        "context_span": list(trace["context_span"]) if trace.get("context_span") else None,
    }
    return AttentionGraph(
        layer=layer,
        heads=heads,
        tokens=tokens,
        token_strings=strings,
        roles=token_roles({**trace, "seq_len": S}),
        edge_index=np.stack([k, q]).astype(np.int64),
        edge_attr=edge_attr,
        weight=weight,
        x=x,
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------
# drawing

ROLE_COLORS: dict[str, str] = {
    "system": "#9e9e9e",
    "prompt": "#4c72b0",
    "context": "#2ca02c",
    "question": "#9467bd",
    "answer": "#d62728",
}


def _shorten(text: Any, n: int = 110) -> str:
    text = _printable(" ".join(str(text).split()))
    return text if len(text) <= n else text[: n - 1] + "…"


def _printable(text: str) -> str:
    """Control and unprintable characters as escapes (``\\n``, ``\\x18``) for tick labels."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def draw_arc_diagram(
    graph: AttentionGraph,
    path: str | Path,
    *,
    title: str | None = None,
    show_self_loops: bool = False,
    dpi: int = 120,
) -> Path:
    """Draw ``graph`` as an arc diagram into a PNG at ``path``.

    Tokens sit left to right in sequence order, labelled with their strings and coloured by
    role; an edge key ``j`` -> query ``i`` is an arc above the axis from ``j`` (left) to ``i``
    (right), coloured by the role of its source, its width and opacity growing with its
    mean-over-heads weight. The title shows the question, the answer and the label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    S = graph.num_nodes
    src, dst = graph.edge_index
    w = graph.weight.astype(np.float64)
    keep = src != dst if not show_self_loops else np.ones_like(src, dtype=bool)
    src, dst, w = src[keep], dst[keep], w[keep]
    order = np.argsort(w, kind="stable")  # heavy arcs drawn last, on top
    src, dst, w = src[order], dst[order], w[order]
    wmax = float(w.max()) if len(w) else 1.0
    rel = w / wmax if wmax > 0 else w

    width_in = float(np.clip(0.16 * S + 2, 8, 60))
    fig, ax = plt.subplots(figsize=(width_in, 7))
    try:
        t = np.linspace(0, np.pi, 24)
        segs = []
        for s, d in zip(src.tolist(), dst.tolist(), strict=True):
            cx, r = (s + d) / 2, (d - s) / 2
            segs.append(np.column_stack([cx - r * np.cos(t), r * np.sin(t)]))
        colors = [
            to_rgba(ROLE_COLORS[ROLES[graph.roles[s]]], alpha=0.15 + 0.8 * a)
            for s, a in zip(src.tolist(), rel.tolist(), strict=True)
        ]
        if segs:
            ax.add_collection(
                LineCollection(segs, colors=colors, linewidths=0.3 + 3.2 * rel, capstyle="round")
            )
        node_colors = [ROLE_COLORS[ROLES[r]] for r in graph.roles]
        ax.scatter(np.arange(S), np.zeros(S), s=22, c=node_colors, zorder=3, edgecolors="none")
        for i, text in enumerate(graph.token_strings):
            label = _printable(text) or "∅"
            ax.text(
                i,
                -0.6,
                label,
                rotation=90,
                ha="center",
                va="top",
                fontsize=7,
                color=node_colors[i],
                family="monospace",
            )
        height = max(((dst - src).max() / 2) if len(src) else 1.0, 1.0)
        ax.set_xlim(-1, S)
        ax.set_ylim(-0.45 * height - 4, height * 1.05 + 0.5)
        ax.set_yticks([])
        for spine in ("left", "right", "top"):
            ax.spines[spine].set_visible(False)
        ax.set_xlabel("token position (arcs: key, left -> query, right; coloured by the key)")
        handles = [
            Line2D([], [], marker="o", ls="", color=ROLE_COLORS[r], label=r)
            for r in ROLES
            if (graph.roles == ROLE_IDS[r]).any()
        ]
        handles.append(Line2D([], [], color="black", lw=3, alpha=0.9, label=f"weight {wmax:.3g}"))
        handles.append(
            Line2D([], [], color="black", lw=0.6, alpha=0.3, label=f"weight {wmax / 5:.3g}")
        )
        ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False, ncol=2)
        if title is None:
            label = graph.meta.get("label")
            verdict = {0: "correct (0)", 1: "hallucinated (1)"}.get(
                None if label is None else int(label), "unlabelled"
            )
            title = (
                f"Q: {_shorten(graph.meta.get('question', ''))}\n"
                f"A: {_shorten(graph.meta.get('answer', ''))}\n"
                f"label: {verdict} | layer {graph.layer}, heads {graph.heads}, "
                f"{graph.num_edges} edges"
            )
        ax.set_title(title, fontsize=10, loc="left")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path

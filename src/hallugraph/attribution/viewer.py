"""One trace's attribution graph for people (``hallugraph attribution RUN --index I``): the
circuit-tracer viewer's JSON, our scores as JSON, a PNG of the pruned graph, the local viewer.

The graph comes from either engine (:mod:`hallugraph.attribution.engine` by default). Nothing is
pickled: circuit-tracer's ``Graph.to_pt`` is ``torch.save`` (pickle), so the graph is kept as the
viewer's JSON (``circuit_tracer.utils.create_graph_files``: the pruned nodes and edges, plus
``graph-metadata.json`` listing the graphs of the folder; written only when circuit-tracer is
installed, the viewer being its own) and ``<slug>.scores.json`` (Gctx, RS, CS, the target
token, the context positions, the settings). The PNG needs no circuit-tracer (pruning:
:func:`hallugraph.attribution.engine.prune.prune_graph`).

The PNG (:func:`draw_attribution_graph`) lays the pruned graph out by position (x) and layer
(y): input tokens at the bottom (context tokens in the context colour of
:data:`hallugraph.graphs.ROLE_COLORS`, answer tokens in the answer colour), the most influential
feature nodes (circles) and error nodes (grey diamonds) at their layer, the logit node on top;
edges drawn with width by |weight|, blue positive, red negative.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hallugraph.attribution.engine.prune import prune_graph
from hallugraph.attribution.run import AttributionSettings, attribute_answer_token
from hallugraph.attribution.scores import GraphLayout, scores_from_graph
from hallugraph.io import atomic_write_json, save_png

__all__ = [
    "attribute_trace",
    "draw_attribution_graph",
    "graph_slug",
    "serve_viewer",
    "write_viewer_files",
]


def graph_slug(question_id: str, k: int = 0) -> str:
    """File-safe name of the graph of answer token ``k`` of a trace."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(question_id)).strip("_") or "trace"
    return f"{base}_a{k}"


def attribute_trace(
    replacement_model: Any,
    row: Mapping[str, Any],
    k: int = 0,
    settings: AttributionSettings | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The graph of answer token ``k`` of a trace and a JSON-able description of it (scores,
    target, context positions, settings)."""
    settings = settings or AttributionSettings()
    t0 = time.perf_counter()
    graph, ctx, shift = attribute_answer_token(
        replacement_model,
        row,
        k,
        max_feature_nodes=settings.max_feature_nodes,
        batch_size=settings.batch_size,
    )
    seconds = time.perf_counter() - t0
    scores = scores_from_graph(graph, ctx)
    target = graph.logit_targets[0]
    p = int(row["prompt_len"])
    info = {
        "question_id": row.get("question_id"),
        "index": row.get("index"),
        "label": row.get("label"),
        "question": row.get("question"),
        "answer": row.get("generated_answer_clean"),
        "answer_token": k,
        "target": {
            "id": int(target.vocab_idx),
            "token": target.token_str,
            "prob": float(graph.logit_probabilities[0]),
        },
        "n_pos": len(graph.input_tokens),
        "bos_shift": shift,
        "context_positions": ctx,
        "answer_positions": list(range(p + shift, p + shift + k)),
        "scores": scores.to_dict(),
        "settings": settings.to_dict(),
        "active_features": int(graph.active_features.shape[0]),
        "seconds": round(seconds, 3),
    }
    return graph, info


def write_viewer_files(
    graph: Any,
    out: str | os.PathLike[str],
    slug: str,
    info: Mapping[str, Any] | None = None,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> list[Path]:
    """``out/<slug>.json`` (circuit-tracer's viewer format, pruned at the thresholds) and
    ``out/graph-metadata.json`` (updated) when circuit-tracer is installed, and, with ``info``,
    ``out/<slug>.scores.json``. An engine graph is converted with ``to_circuit_tracer()``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if info is not None:
        files.append(atomic_write_json(out / f"{slug}.scores.json", info))
    try:
        from circuit_tracer.utils.create_graph_files import create_graph_files
    except ImportError:
        return files
    if hasattr(graph, "to_circuit_tracer"):
        graph = graph.to_circuit_tracer()
    scan = graph.scan if graph.scan is not None else "hallugraph"
    create_graph_files(
        graph,
        slug=slug,
        output_path=str(out),
        scan=scan,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
    )
    return [out / f"{slug}.json", out / "graph-metadata.json", *files]


def serve_viewer(out: str | os.PathLike[str], port: int) -> Any:
    """Start circuit-tracer's local viewer on ``port`` serving the graphs in ``out``; returns
    the server (``.stop()``). Open ``http://localhost:PORT/index.html?slug=SLUG``."""
    from circuit_tracer.frontend.local_server import serve

    return serve(data_dir=str(Path(out).resolve()), port=int(port))


def _spread(keys: Sequence[tuple[int, int]], width: float = 0.8) -> np.ndarray:
    """x offsets in ``[-width/2, width/2]`` for nodes sharing a ``(pos, row)`` cell."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(keys):
        cells.setdefault(key, []).append(i)
    off = np.zeros(len(keys))
    for members in cells.values():
        if len(members) > 1:
            off[members] = np.linspace(-width / 2, width / 2, len(members))
    return off


def draw_attribution_graph(
    graph: Any,
    path: str | os.PathLike[str],
    *,
    token_strings: Sequence[str] | None = None,
    context: Sequence[int] = (),
    answer: Sequence[int] = (),
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    max_features: int = 30,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """A PNG of the graph pruned as circuit-tracer prunes it (``prune_graph``), keeping at most
    the ``max_features`` most influential feature nodes and as many error nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    from hallugraph.graphs.draw import ROLE_COLORS, label_tokens, printable

    lay = GraphLayout.from_graph(graph)
    pruned = prune_graph(graph, node_threshold, edge_threshold)
    node_mask, edge_mask, cumulative = (t.cpu() for t in pruned)
    adj = graph.adjacency_matrix.detach().cpu().to(torch.float64)
    feats = [i for i in range(lay.n_features) if node_mask[i]]
    feats = sorted(feats, key=lambda i: float(cumulative[i]))[:max_features]  # lower = stronger
    errors = [i for i in range(lay.errors.start, lay.errors.stop) if node_mask[i]]
    errors = sorted(errors, key=lambda i: float(cumulative[i]))[:max_features]
    tokens = list(range(lay.tokens.start, lay.tokens.stop))
    logits = list(range(lay.logits.start, lay.logits.stop))
    nodes = feats + errors + tokens + logits
    kind = ["feature"] * len(feats) + ["error"] * len(errors)
    kind += ["token"] * len(tokens) + ["logit"] * len(logits)
    cells: list[tuple[int, int]] = []
    for n, kd in zip(nodes, kind, strict=True):
        if kd == "feature":
            layer, pos, _ = graph.active_features[graph.selected_features[n]].tolist()
            cells.append((int(pos), int(layer) + 1))
        elif kd == "error":
            layer, pos = divmod(n - lay.errors.start, lay.n_pos)
            cells.append((pos, layer + 1))
        elif kd == "token":
            cells.append((n - lay.tokens.start, 0))
        else:
            cells.append((lay.n_pos - 1, lay.n_layers + 1))
    xy = np.array(cells, dtype=np.float64)
    xy[:, 0] += _spread(cells)
    where = {n: i for i, n in enumerate(nodes)}

    idx = torch.tensor(nodes, dtype=torch.long)
    sub = adj[idx][:, idx]
    keep = edge_mask[idx][:, idx] & (sub != 0)
    keep.fill_diagonal_(False)
    d_loc, s_loc = (t.numpy() for t in keep.nonzero(as_tuple=True))  # rows = targets
    w = sub[d_loc, s_loc].numpy()
    wmax = float(np.abs(w).max()) if len(w) else 1.0
    order = np.argsort(np.abs(w), kind="stable")  # heavy edges drawn last, on top

    ctx_set, ans_set = set(int(c) for c in context), set(int(a) for a in answer)
    n_pos = lay.n_pos
    width_in = float(np.clip(0.18 * n_pos + 3, 8, 60))
    fig, ax = plt.subplots(figsize=(width_in, 2 + 0.45 * (lay.n_layers + 2)))
    try:
        segs, colors, widths = [], [], []
        for j in order.tolist():
            s, d = int(s_loc[j]), int(d_loc[j])
            rel = abs(w[j]) / wmax if wmax > 0 else 0.0
            segs.append([xy[s], xy[d]])
            colors.append(to_rgba("#1f77b4" if w[j] > 0 else "#d62728", alpha=0.15 + 0.75 * rel))
            widths.append(0.3 + 3.5 * rel)
        if segs:
            ax.add_collection(LineCollection(segs, colors=colors, linewidths=widths, zorder=1))
        style = {
            "feature": ("o", "#ff7f0e", 40),
            "error": ("D", "#9e9e9e", 30),
            "logit": ("s", "#9467bd", 80),
        }
        for kd, (marker, color, size) in style.items():
            members = [i for i, k in enumerate(kind) if k == kd]
            if members:
                ax.scatter(xy[members, 0], xy[members, 1], marker=marker, s=size, c=color, zorder=3)
        tok_colors = [
            ROLE_COLORS["context"]
            if p in ctx_set
            else ROLE_COLORS["answer"]
            if p in ans_set
            else ROLE_COLORS["prompt"]
            for p in range(n_pos)
        ]
        ax.scatter(np.arange(n_pos), np.zeros(n_pos), marker="s", s=30, c=tok_colors, zorder=3)
        strings = list(token_strings) if token_strings is not None else []
        label_tokens(ax, strings[:n_pos] + [""] * (n_pos - len(strings)), tok_colors, -0.4)
        for n in logits:
            t = graph.logit_targets[n - lay.logits.start]
            prob = float(graph.logit_probabilities[n - lay.logits.start])
            x, y = xy[where[n]]
            ax.text(
                x,
                y + 0.35,
                f"{printable(t.token_str)!s} (p={prob:.2f})",
                ha="center",
                va="bottom",
                fontsize=8,
                color=style["logit"][1],
            )
        ax.set_xlim(-1, n_pos)
        ax.set_ylim(-3.5, lay.n_layers + 2)
        ax.set_yticks(range(lay.n_layers + 2))
        ax.set_yticklabels(["emb"] + [f"L{i}" for i in range(lay.n_layers)] + ["logit"], fontsize=7)
        ax.set_xticks([])
        for spine in ("right", "top"):
            ax.spines[spine].set_visible(False)
        handles = [
            Line2D([], [], marker="o", ls="", color=style["feature"][1], label="feature"),
            Line2D([], [], marker="D", ls="", color=style["error"][1], label="error"),
            Line2D([], [], marker="s", ls="", color=ROLE_COLORS["context"], label="context"),
            Line2D([], [], marker="s", ls="", color=ROLE_COLORS["prompt"], label="prompt"),
            *(
                [Line2D([], [], marker="s", ls="", color=ROLE_COLORS["answer"], label="answer")]
                if ans_set
                else []
            ),
            Line2D([], [], color="#1f77b4", lw=2, label="+ edge"),
            Line2D([], [], color="#d62728", lw=2, label="− edge"),
        ]
        ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False, ncol=len(handles))
        ax.set_title(
            title or f"{len(feats)} features, {len(errors)} error nodes, {len(segs)} edges",
            fontsize=9,
            loc="left",
        )
        return save_png(fig, path, dpi=dpi)
    finally:
        plt.close(fig)

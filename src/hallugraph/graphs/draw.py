"""Arc diagrams of an attention graph (PNG): tokens on a line, arcs for the strongest edges,
coloured by role."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hallugraph.graphs.graph import AttentionGraph
from hallugraph.graphs.roles import ROLE_IDS, ROLES
from hallugraph.io import save_png

if TYPE_CHECKING:  # pragma: no cover
    pass


ROLE_COLORS: dict[str, str] = {
    "system": "#9e9e9e",
    "prompt": "#4c72b0",
    "context": "#2ca02c",
    "question": "#9467bd",
    "answer": "#d62728",
}


def _shorten(text: Any, n: int = 110) -> str:
    text = printable(" ".join(str(text).split()))
    return text if len(text) <= n else text[: n - 1] + "…"


def printable(text: str) -> str:
    """Control and unprintable characters as escapes (``\\n``, ``\\x18``) for tick labels."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def label_tokens(ax: Any, texts: Sequence[Any], colors: Sequence[Any], y: float) -> None:
    """Token ``i``'s text (:func:`printable`; ``∅`` when empty) written downwards from ``(i, y)``
    of ``ax``, small, monospace, in ``colors[i]``."""
    for i, text in enumerate(texts):
        ax.text(
            i,
            y,
            printable(str(text)) or "∅",
            rotation=90,
            ha="center",
            va="top",
            fontsize=7,
            color=colors[i],
            family="monospace",
        )


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
        label_tokens(ax, graph.token_strings, node_colors, -0.6)
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
        return save_png(fig, path, dpi=dpi)
    finally:
        plt.close(fig)

"""An attribution graph for the viewer: circuit-tracer's viewer JSON (what
``hallugraph attribution`` writes, :func:`hallugraph.attribution.viewer.write_viewer_files`)
read into rows (``0`` = input tokens, ``l + 1`` = layer ``l``, ``n_layers + 1`` = logits) and
positions, with the scores JSON beside it (Gctx / RS / CS, context and answer positions).

The format (``circuit_tracer.frontend.graph_models``): ``metadata`` (``slug``,
``prompt_tokens``, ``prompt``, ...), ``nodes`` (``node_id``, ``feature_type`` one of
``cross layer transcoder`` / ``mlp reconstruction error`` / ``embedding`` / ``logit``, ``layer``
as a string: a layer number, ``"E"`` for tokens, ``n_layers + 1`` for logits, ``ctx_idx`` the
position, ``influence``, ``activation``, ``clerp``, ``token_prob``, ``is_target_logit``) and
``links`` (``source``, ``target`` node ids, ``weight``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["GraphFormatError", "NODE_KINDS", "read_attribution_graph"]

NODE_KINDS = {
    "cross layer transcoder": "feature",
    "mlp reconstruction error": "error",
    "embedding": "token",
    "logit": "logit",
}


class GraphFormatError(ValueError):
    """A graph JSON that is not circuit-tracer's viewer format (the message names the file)."""


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def read_attribution_graph(path: str | Path, scores: str | Path | None = None) -> dict[str, Any]:
    """The viewer's payload of one graph JSON (and its ``.scores.json``, when given)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise GraphFormatError(f"{path}: cannot read the graph JSON ({err})") from err
    if not isinstance(data, dict):
        raise GraphFormatError(f"{path}: a graph JSON is an object with metadata, nodes, links")
    missing = [k for k in ("metadata", "nodes", "links") if k not in data]
    if missing:
        raise GraphFormatError(f"{path}: missing {', '.join(missing)} (circuit-tracer format)")
    meta = data["metadata"] or {}
    raw_nodes = data["nodes"]
    feature_layers = []
    logit_layers = []
    for k, n in enumerate(raw_nodes):
        for key in ("node_id", "feature_type", "layer", "ctx_idx"):
            if key not in n:
                raise GraphFormatError(f"{path}: node {k} has no {key!r}")
        kind = NODE_KINDS.get(n["feature_type"])
        if kind is None:
            raise GraphFormatError(
                f"{path}: node {k} has unknown feature_type {n['feature_type']!r}"
            )
        if kind in ("feature", "error"):
            feature_layers.append(int(n["layer"]))
        elif kind == "logit":
            logit_layers.append(int(n["layer"]))
    if logit_layers:
        n_layers = max(logit_layers) - 1
    else:
        n_layers = max(feature_layers, default=-1) + 1
    nodes = []
    where: dict[str, int] = {}
    counts = {kind: 0 for kind in NODE_KINDS.values()}
    for n in raw_nodes:
        kind = NODE_KINDS[n["feature_type"]]
        counts[kind] += 1
        row = 0 if kind == "token" else n_layers + 1 if kind == "logit" else int(n["layer"]) + 1
        where[str(n["node_id"])] = len(nodes)
        nodes.append(
            {
                "id": str(n["node_id"]),
                "kind": kind,
                "row": row,
                "pos": int(n["ctx_idx"]),
                "feature": n.get("feature"),
                "influence": _num(n.get("influence")),
                "activation": _num(n.get("activation")),
                "label": n.get("clerp") or "",
                "prob": _num(n.get("token_prob")),
                "target": bool(n.get("is_target_logit", False)),
            }
        )
    links = []
    for k, e in enumerate(data["links"]):
        try:
            s, t, w = where[str(e["source"])], where[str(e["target"])], float(e["weight"])
        except KeyError as err:
            raise GraphFormatError(
                f"{path}: link {k} names an unknown node or lacks {err}"
            ) from err
        links.append([s, t, w])
    tokens = [str(t) for t in meta.get("prompt_tokens") or []]
    n_pos = max([len(tokens), *(n["pos"] + 1 for n in nodes)])
    info: dict[str, Any] = {}
    if scores is not None:
        try:
            info = json.loads(Path(scores).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise GraphFormatError(f"{scores}: cannot read the scores JSON ({err})") from err
    return {
        "slug": meta.get("slug", path.stem),
        "file": str(path),
        "prompt_tokens": tokens,
        "n_pos": n_pos,
        "n_layers": n_layers,
        "nodes": nodes,
        "links": links,
        "counts": counts,
        "scores": info.get("scores"),
        "context_positions": info.get("context_positions") or [],
        "answer_positions": info.get("answer_positions") or [],
        "target": info.get("target"),
        "question": info.get("question"),
        "answer": info.get("answer"),
        "label": info.get("label"),
        "question_id": info.get("question_id"),
        "index": info.get("index"),
    }

""":class:`AttentionGraph`: one trace's attention at one layer as a directed token graph (to
networkx / PyTorch Geometric), built by :func:`build_graph`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hallugraph.graphs.roles import ROLES, HeadsMode, token_roles

if TYPE_CHECKING:  # pragma: no cover
    import networkx
    import torch_geometric.data


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

"""CHARM's network and its input: the cached graphs of some traces as arrays (:class:`GraphArrays`)
and the edge-feature message-passing model (:func:`charm_model_class`, torch imported on use)."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from hallugraph.features import FeatureTable
from hallugraph.features.charm import CODE_SCALE, NODE_ANSWER, NODE_META, NODE_PROMPT


class GraphArrays:
    """The cached CHARM graphs of some traces, as numpy arrays (uint8 edges, fp16 nodes).

    ``nodes`` ``[n, N, 2 + F + D]`` and ``edges`` ``[n, E, 2 + F]`` (see
    :mod:`hallugraph.features.charm`); ``F`` attention features, ``D`` activation features.
    """

    def __init__(self, nodes: np.ndarray, edges: np.ndarray) -> None:
        if nodes.ndim != 3 or edges.ndim != 3 or len(nodes) != len(edges):
            raise ValueError(f"bad CHARM arrays: nodes {nodes.shape}, edges {edges.shape}")
        self.nodes, self.edges = nodes, edges
        self.E, self.F = edges.shape[1], edges.shape[2] - 2
        self.N = nodes.shape[1]
        self.D = nodes.shape[2] - NODE_META - self.F
        if self.D < 0:
            raise ValueError(f"inconsistent CHARM arrays: nodes {nodes.shape}, edges {edges.shape}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, E, F, D)``: node slots, edge slots, attention and activation features."""
        return self.N, self.E, self.F, self.D

    @classmethod
    def from_table(cls, X: FeatureTable) -> GraphArrays:
        return cls(X.stat("charm_nodes"), X.stat("charm_graph"))

    def __len__(self) -> int:
        return len(self.nodes)

    def node_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of every node feature column over the real (non-padding) nodes."""
        real = self.nodes[..., 0] > 0
        feats = self.nodes[real][:, NODE_META:].astype(np.float64)
        if len(feats) == 0:
            width = self.nodes.shape[2] - NODE_META
            return np.zeros(width), np.ones(width)
        std = feats.std(axis=0)
        return feats.mean(axis=0), np.where(std > 1e-6, std, 1.0)

    def batch(self, idx: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
        """One disjoint-union batch of the graphs ``idx``, as torch tensors.

        Nodes are the real (non-padding) node slots of each graph, graph after graph; ``x_att``
        ``[n_nodes, 3 + F]`` = kind one-hot (prompt, answer), in-context flag, standardized
        self-attention; ``x_act`` ``[n_nodes, D]`` standardized activations; ``edge_index``
        ``[2, E]`` (row 0 = source key, row 1 = target query); ``edge_attr`` ``[E, F + 2]`` =
        scores, then the marks prompt -> answer, answer -> answer; ``pool`` indices of the answer
        nodes and ``pool_batch`` their graph. Training builds many batches of the same graphs:
        :meth:`prepare` converts them once, and its batches are these.
        """
        return _tensors(self._union(np.asarray(idx), mean, std), len(idx))

    def _union(self, idx: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`batch` as numpy arrays, with ``graph`` (each node's graph in the batch) and
        ``edge_graph`` (each edge's)."""
        B, N, F = len(idx), self.N, self.F
        nodes = self.nodes[idx]  # [B, N, C] fp16
        real = (nodes[..., 0] > 0).reshape(-1)
        compact = np.cumsum(real) - 1  # slot b * N + i -> node index in the batch
        flat = nodes.reshape(B * N, -1)[real].astype(np.float32)
        kind = flat[:, 0]
        feats = (flat[:, NODE_META:] - mean) / std
        onehot = np.stack([kind == NODE_PROMPT, kind == NODE_ANSWER], axis=1)
        x_att = np.concatenate([onehot, flat[:, 1:2], feats[:, :F]], axis=1)
        x_act = feats[:, F:]
        edges = self.edges[idx]  # [B, E, 2 + F] uint8
        b, r = np.nonzero(edges[..., 1])
        src = compact[b * N + edges[b, r, 0].astype(np.int64) - 1]
        dst = compact[b * N + edges[b, r, 1].astype(np.int64) - 1]
        return {
            "x_att": np.ascontiguousarray(x_att, dtype=np.float32),
            "x_act": np.ascontiguousarray(x_act, dtype=np.float32),
            "src": src.astype(np.int64),
            "dst": dst.astype(np.int64),
            "codes": edges[b, r, 2:],
            "from_prompt": kind[src] == NODE_PROMPT,
            "answer": kind == NODE_ANSWER,
            "graph": np.repeat(np.arange(B), N)[real],
            "edge_graph": b.astype(np.int64),
        }

    def prepare(self, mean: np.ndarray, std: np.ndarray, chunk: int = 256) -> PreparedGraphs:
        """Every graph converted once (standardized float32 features of the real nodes, edge
        lists; the edge scores stay uint8 codes, converted per batch):
        :meth:`PreparedGraphs.batch` then only gathers rows, and gives the tensors :meth:`batch`
        gives, bit for bit."""
        parts = [
            self._union(np.arange(s, min(s + chunk, len(self))), mean, std)
            for s in range(0, len(self), chunk)
        ]
        return PreparedGraphs(
            parts, [min(chunk, len(self) - s) for s in range(0, len(self), chunk)]
        )


class PreparedGraphs:
    """The graphs of a :class:`GraphArrays` converted once (:meth:`GraphArrays.prepare`): node
    rows and edge rows of every graph, graph after graph, edges with graph-local node indices."""

    def __init__(self, parts: list[dict[str, np.ndarray]], sizes: list[int]) -> None:
        node_n, edge_n, local_src, local_dst = [], [], [], []
        for part, size in zip(parts, sizes, strict=True):
            nn_ = np.bincount(part["graph"], minlength=size)
            ne = np.bincount(part["edge_graph"], minlength=size)
            start = np.concatenate([[0], np.cumsum(nn_)[:-1]])
            local_src.append(part["src"] - start[part["edge_graph"]])
            local_dst.append(part["dst"] - start[part["edge_graph"]])
            node_n.append(nn_)
            edge_n.append(ne)
        cat = functools.partial(np.concatenate, axis=0)
        self.x_att = cat([p["x_att"] for p in parts]) if parts else np.zeros((0, 0), np.float32)
        self.x_act = cat([p["x_act"] for p in parts]) if parts else np.zeros((0, 0), np.float32)
        self.codes = cat([p["codes"] for p in parts]) if parts else np.zeros((0, 0), np.uint8)
        self.from_prompt = cat([p["from_prompt"] for p in parts]) if parts else np.zeros(0, bool)
        self.answer = cat([p["answer"] for p in parts]) if parts else np.zeros(0, bool)
        self.src = cat(local_src) if parts else np.zeros(0, np.int64)
        self.dst = cat(local_dst) if parts else np.zeros(0, np.int64)
        self.node_n = cat(node_n) if parts else np.zeros(0, np.int64)
        self.edge_n = cat(edge_n) if parts else np.zeros(0, np.int64)
        self.node_start = np.concatenate([[0], np.cumsum(self.node_n)[:-1]]).astype(np.int64)
        self.edge_start = np.concatenate([[0], np.cumsum(self.edge_n)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.node_n)

    def batch(self, idx: np.ndarray) -> dict[str, Any]:
        """:meth:`GraphArrays.batch` of the graphs ``idx`` (the same tensors)."""
        idx = np.asarray(idx, dtype=np.int64)
        nn_, ne = self.node_n[idx], self.edge_n[idx]
        n_before = np.cumsum(nn_) - nn_  # each graph's first node in the batch
        rows = _ranges(self.node_start[idx], nn_)
        erows = _ranges(self.edge_start[idx], ne)
        shift = np.repeat(n_before, ne)
        graph = np.repeat(np.arange(len(idx)), nn_)
        union = {
            "x_att": self.x_att[rows],
            "x_act": self.x_act[rows],
            "src": self.src[erows] + shift,
            "dst": self.dst[erows] + shift,
            "codes": self.codes[erows],
            "from_prompt": self.from_prompt[erows],
            "answer": self.answer[rows],
            "graph": graph,
        }
        return _tensors(union, len(idx))


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorized."""
    total = int(counts.sum())
    before = np.cumsum(counts) - counts
    return np.repeat(starts - before, counts) + np.arange(total, dtype=np.int64)


def _tensors(u: dict[str, np.ndarray], n_graphs: int) -> dict[str, Any]:
    import torch

    ans = np.flatnonzero(u["answer"])
    from_prompt = u["from_prompt"].astype(np.float32)
    attr = np.concatenate(  # edge scores as float32 per batch: uint8 codes are 4x smaller
        [
            u["codes"].astype(np.float32) / CODE_SCALE,
            from_prompt[:, None],
            1.0 - from_prompt[:, None],
        ],
        axis=1,
    )
    return {
        "x_att": torch.from_numpy(np.ascontiguousarray(u["x_att"])),
        "x_act": torch.from_numpy(np.ascontiguousarray(u["x_act"])),
        "edge_index": torch.from_numpy(np.stack([u["src"], u["dst"]]).astype(np.int64)),
        "edge_attr": torch.from_numpy(np.ascontiguousarray(attr, dtype=np.float32)),
        "pool": torch.from_numpy(ans.astype(np.int64)),
        "pool_batch": torch.from_numpy(u["graph"][ans].astype(np.int64)),
        "num_graphs": n_graphs,
    }


_MODEL_CLASS: Any = None


def charm_model_class() -> Any:
    """The CHARM network class (built on first use: importing PyTorch Geometric takes seconds,
    so the detector registry does not pay for it)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is not None:
        return _MODEL_CLASS
    import torch
    from torch import nn

    with warnings.catch_warnings():  # PyG's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.nn import MessagePassing
        from torch_geometric.utils import scatter

    def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Module:
        return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))

    class CharmConv(MessagePassing):
        """CHARM's ``CustomConv``: ``m_i = mean_j MLP([x_j, e_ji])``, ``x_i' = MLP([x_i, m_i])``.

        The message MLP's first layer on the concatenation is computed as ``W_x x_j + W_e e_ji``
        (the same function): ``W_x x`` once per node, then gathered, instead of once per edge.
        """

        def __init__(self, dim: int) -> None:
            super().__init__(aggr="mean", flow="source_to_target")
            self.msg_x = nn.Linear(dim, 2 * dim)
            self.msg_e = nn.Linear(dim, 2 * dim, bias=False)
            self.msg_out = nn.Sequential(nn.ReLU(), nn.Linear(2 * dim, dim))
            self.up_mlp = mlp(2 * dim, 2 * dim, dim)

        def forward(self, x, edge_index, edge_attr):  # noqa: ANN001, ANN201
            msg = self.propagate(edge_index, hx=self.msg_x(x), edge_attr=edge_attr)
            return self.up_mlp(torch.cat([x, msg], dim=-1))

        def message(self, hx_j, edge_attr):  # noqa: ANN001, ANN201
            return self.msg_out(hx_j + self.msg_e(edge_attr))

    class CharmNet(nn.Module):
        """Encoders -> ``layers`` x (CharmConv, dropout, residual) -> mean+max over the answer
        nodes -> linear logit."""

        def __init__(
            self, d_att: int, d_act: int, d_edge: int, hidden: int, layers: int, dropout: float
        ) -> None:
            super().__init__()
            self.enc_x = nn.Linear(d_att, hidden)
            self.enc_act = nn.Linear(d_act, hidden) if d_act > 0 else None
            self.cat = nn.Linear(2 * hidden, hidden) if d_act > 0 else None
            self.enc_e = nn.Linear(d_edge, hidden)
            self.convs = nn.ModuleList(CharmConv(hidden) for _ in range(layers))
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(2 * hidden, 1)

        def forward(self, g: dict[str, Any]) -> torch.Tensor:
            x = self.enc_x(g["x_att"])
            if self.enc_act is not None:
                x = self.cat(torch.cat([x, self.enc_act(g["x_act"])], dim=-1))
            e = self.enc_e(g["edge_attr"])
            for conv in self.convs:
                x = x + self.dropout(conv(x, g["edge_index"], e))
            h = x[g["pool"]]
            n = g["num_graphs"]
            pooled = torch.cat(
                [
                    scatter(h, g["pool_batch"], dim=0, dim_size=n, reduce="mean"),
                    scatter(h, g["pool_batch"], dim=0, dim_size=n, reduce="max"),
                ],
                dim=-1,
            )
            return self.head(pooled).squeeze(-1)

        def decay_params(self) -> tuple[list, list]:
            """(the activation encoder's weight, every other parameter)."""
            decay = [self.enc_act.weight] if self.enc_act is not None else []
            ids = {id(p) for p in decay}
            return decay, [p for p in self.parameters() if id(p) not in ids]

    _MODEL_CLASS = CharmNet
    return CharmNet

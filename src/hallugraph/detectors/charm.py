"""CHARM (Frasca, Bar-Shalom, Ziser, Maron, ICLR 2026, "Neural Message-Passing on Attention
Graphs for Hallucination Detection"): a graph neural network over the attention graph of the
answer, with every layer's and head's attention score on the edges.

Reads the ``charm_graph`` (edges) and ``charm_nodes`` (node features) statistics
(:mod:`hallugraph.features.charm`, which documents the graph and what is kept of it). Built with
PyTorch Geometric's ``MessagePassing`` (pure-python core, no compiled extension), CPU only; the
number of torch threads is left as the caller set it.

What follows the reference (``Noired/charm``: ``model/mp.py``, ``training.py``,
``configs/charm/*_att_act.yaml``):

* encoders: a linear map of the node's attention features (``encoder_x``), a separate linear
  map of its activations (``attr_encoders.act``, L2 weight decay 0.1 on its weight only, as
  ``weight_decay_target: attr_encoders.act``), concatenated and mixed by a linear layer
  (``cat_attr: yes``, at the beginning); a linear map of the edge features (``encoder_e``);
* the convolution (``CustomConv``): message ``MLP([x_j, e_ji])``, **mean** aggregation over the
  incoming edges (key -> query, ``source_to_target``), update ``MLP([x_i, m_i])``; MLPs are
  ``Linear(in, 2h) -> ReLU -> Linear(2h, h)``; no extra activation, dropout 0.5 on the
  convolution's output, residual connection;
* edge marks: two extra edge features telling prompt -> answer from answer -> answer edges
  (``mark_prompt_edges: true``); no node marks beyond the node kind;
* Adam, learning rate 1e-3, batch 32, at most 75 epochs, early stopping with patience 20 on the
  validation AUPR of the hallucinated class (the reference's ``aupr_hallu``), the best epoch's
  weights kept, learning rate halved after 5 epochs without improvement (``scheduler: plateau``);
* three seeds; the score is the mean of their probabilities.

What deviates, and why:

* **2 message-passing layers, hidden 64** (the task's spec; the reference's configs use 1 layer
  of width 128 on larger datasets);
* **readout**: mean **and** max over the answer nodes, concatenated, then the linear head (the
  reference's response-level readout is the mean; max keeps a single hallucinated token from
  being averaged away);
* **class balance**: BCE with ``pos_weight = n_negative / n_positive`` (the configs read have
  ``balance: false``; hallucination rates here are far from 50 % and differ by dataset);
* **node features are standardized** (mean / std over the training graphs' nodes): the
  activations are random projections of the residual stream, whose scale varies by layer;
* **validation split**: carved out of the traces given to ``fit`` (20 %, grouped by question
  and stratified by label with :func:`hallugraph.evaluate.split_groups`, the same for the three
  seeds; the reference has a fixed validation file). Without both classes on both sides, no
  early stopping: the last epoch is kept.

* **the graph** is the compact one of :mod:`hallugraph.features.charm` (at most 48 prompt
  nodes, 512 edges per trace, uint8 scores, random projections of 3 deep layers), not every
  token and every edge.

Cost: the work is mostly per edge (the edge encoder ``F + 2 -> h`` and the message MLP, ~50 k
multiply-adds per edge forward). With the default budget a SmolLM2 trace has ~400-500 edges:
600 such graphs take ~2-3 s per epoch on one CPU core, so a ``fit`` (3 seeds, up to 75 epochs
each, early stopping) takes ~2-9 minutes. Small graphs on a shared machine run several times
faster with ``torch.set_num_threads(1)`` than with two threads competing for two busy cores (the
detector never changes the thread count). Padding slots are never materialised.

A training set with a single class gives a constant score (that class). ``fit_seconds_`` holds
the wall time of the last ``fit``; ``history_`` the epochs, best epoch and validation AUPR of
each seed.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import numpy as np
from scipy.special import expit

from hallugraph.detectors import Detector, register
from hallugraph.features import FeatureTable
from hallugraph.features.charm import CODE_SCALE, NODE_ANSWER, NODE_META, NODE_PROMPT

PAPER = (
    "Frasca, Bar-Shalom, Ziser, Maron, ICLR 2026, Neural Message-Passing on Attention Graphs "
    "for Hallucination Detection (CHARM)"
)


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
        nodes and ``pool_batch`` their graph.
        """
        import torch

        idx = np.asarray(idx)
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
        from_prompt = (kind[src] == NODE_PROMPT).astype(np.float32)
        attr = np.concatenate(
            [
                edges[b, r, 2:].astype(np.float32) / CODE_SCALE,
                from_prompt[:, None],
                1.0 - from_prompt[:, None],
            ],
            axis=1,
        )
        ans = np.flatnonzero(kind == NODE_ANSWER)
        graph = np.repeat(np.arange(B), N)[real]
        return {
            "x_att": torch.from_numpy(np.ascontiguousarray(x_att, dtype=np.float32)),
            "x_act": torch.from_numpy(np.ascontiguousarray(x_act, dtype=np.float32)),
            "edge_index": torch.from_numpy(np.stack([src, dst]).astype(np.int64)),
            "edge_attr": torch.from_numpy(np.ascontiguousarray(attr, dtype=np.float32)),
            "pool": torch.from_numpy(ans.astype(np.int64)),
            "pool_batch": torch.from_numpy(graph[ans].astype(np.int64)),
            "num_graphs": B,
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


@register
class Charm(Detector):
    """Edge-feature message passing (2 layers, hidden 64, mean aggregation) over the CHARM
    attention graph, mean+max pooled over the answer nodes; mean of 3 seeds' probabilities."""

    name = "charm"
    family = "graph"
    paper = PAPER
    stats = ("charm_graph", "charm_nodes")
    _decode_last = ("models_",)

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.5,
        epochs: int = 75,
        patience: int = 20,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        act_weight_decay: float = 0.1,
        validation_fraction: float = 0.2,
        n_seeds: int = 3,
        balanced: bool = True,
        seed: int = 0,
    ) -> None:
        self.hidden = hidden
        self.layers = layers
        self.dropout = dropout
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.act_weight_decay = act_weight_decay
        self.validation_fraction = validation_fraction
        self.n_seeds = n_seeds
        self.balanced = balanced
        self.seed = seed

    # ------------------------------------------------------------------------------------------

    def _encode_fitted(self, name: str, value: Any, arrays: dict[str, np.ndarray]) -> Any:
        """The seeds' networks as their ``state_dict`` arrays (the architecture follows from
        the parameters and ``shape_``); everything else through the generic encoder."""
        if name != "models_":
            return super()._encode_fitted(name, value, arrays)
        out = []
        for i, model in enumerate(value):
            keys = []
            for k, t in model.state_dict().items():
                arrays[f"models_.{i}.{k}"] = t.detach().cpu().numpy().copy()
                keys.append(k)
            out.append(keys)
        return {"__charm_models__": out}

    def _decode_fitted(self, name: str, node: Any, arrays: dict[str, np.ndarray]) -> Any:
        if name != "models_":
            return super()._decode_fitted(name, node, arrays)
        import torch

        models = []
        if node["__charm_models__"]:
            _, _, F, D = self.shape_  # restored first (_decode_last)
        for i, keys in enumerate(node["__charm_models__"]):
            model = charm_model_class()(3 + F, D, F + 2, self.hidden, self.layers, self.dropout)
            state = {k: torch.from_numpy(np.array(arrays[f"models_.{i}.{k}"])) for k in keys}
            model.load_state_dict(state, strict=True)
            models.append(model.eval())
        return models

    def _split(self, X: FeatureTable, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from hallugraph.evaluate import split_groups

        n = len(y)
        if self.validation_fraction <= 0 or n < 10:
            return np.arange(n), None
        try:
            groups = X.groups
        except Exception:  # noqa: BLE001 - rows without ids: one group per trace
            groups = np.arange(n)
        f = self.validation_fraction
        tr, va, _ = split_groups(groups, seed=self.seed, frac=(1 - f, f, 0.0), labels=y)
        if len(np.unique(y[tr])) < 2 or len(np.unique(y[va])) < 2:
            return np.arange(n), None
        return tr, va

    def _logits(self, model: Any, G: GraphArrays, idx: np.ndarray) -> np.ndarray:
        import torch

        out = []
        model.eval()
        with torch.no_grad():
            for start in range(0, len(idx), 128):
                g = G.batch(idx[start : start + 128], self.mean_, self.std_)
                out.append(model(g).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _train_one(
        self, G: GraphArrays, y: np.ndarray, tr: np.ndarray, va: np.ndarray | None, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        import torch

        from hallugraph.evaluate import average_precision

        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        cls = charm_model_class()
        model = cls(3 + G.F, G.D, G.F + 2, self.hidden, self.layers, self.dropout)
        decay, rest = model.decay_params()
        groups = [{"params": rest, "weight_decay": 0.0}]
        if decay:
            groups.append({"params": decay, "weight_decay": self.act_weight_decay})
        opt = torch.optim.Adam(groups, lr=self.learning_rate)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=5)
        n_pos = float(y[tr].sum())
        pos_weight = (len(tr) - n_pos) / n_pos if self.balanced and n_pos > 0 else 1.0
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
        yt = torch.from_numpy(y.astype(np.float32))
        best, best_state, best_epoch, stale, epoch = -np.inf, None, -1, 0, -1
        for epoch in range(self.epochs):
            model.train()
            order = rng.permutation(tr)
            for start in range(0, len(order), self.batch_size):
                bi = order[start : start + self.batch_size]
                opt.zero_grad()
                loss = loss_fn(model(G.batch(bi, self.mean_, self.std_)), yt[bi])
                loss.backward()
                opt.step()
            if va is None:
                continue
            score = float(average_precision(y[va], self._logits(model, G, va)))
            sched.step(score)
            if score > best:
                best, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        info = {"seed": seed, "epochs": epoch + 1, "best_epoch": best_epoch, "val_aupr": best}
        return model, info

    def fit(self, X: FeatureTable, y: np.ndarray) -> Charm:
        t0 = time.perf_counter()
        y = np.asarray(y).astype(np.int64)
        G = GraphArrays.from_table(X)
        if len(G) != len(y):
            raise ValueError(f"{len(G)} graphs for {len(y)} labels")
        self.models_, self.history_ = [], []
        classes = np.unique(y)
        self.constant_ = None
        if len(classes) < 2:
            self.constant_ = float(classes[0]) if len(classes) else 0.5
            self.fit_seconds_ = time.perf_counter() - t0
            return self
        tr, va = self._split(X, y)
        self.mean_, self.std_ = GraphArrays(G.nodes[tr], G.edges[tr]).node_stats()
        self.shape_ = G.shape
        for s in range(self.n_seeds):
            model, info = self._train_one(G, y, tr, va, self.seed + s)
            self.models_.append(model)
            self.history_.append(info)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        G = GraphArrays.from_table(X)
        if self.constant_ is not None:
            return np.full(len(G), self.constant_)
        if G.shape != self.shape_:
            raise ValueError(
                f"CHARM graphs of shape {G.shape} but the detector was fitted on {self.shape_} "
                "(N, E, F, D): another model or other statistic parameters"
            )
        idx = np.arange(len(G))
        probs = [expit(self._logits(m, G, idx).astype(np.float64)) for m in self.models_]
        return np.mean(probs, axis=0)

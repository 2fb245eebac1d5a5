"""The rows computed so far, kept compact, and circuit-tracer's influence ranking over them.

A feature row of layer ``L`` is zero on the features of layers ``≥ L``, so it is kept only up
to ``offsets[L]`` (rows grouped by layer, one growing buffer per layer; logit rows keep all
features). Beside it: the error + token part of every row, each row's absolute sum (the
normalization), and the square matrix of absolute values between the nodes that have rows
(what the power iteration propagates through).

:meth:`RowStore.influence` equals circuit-tracer 0.5.0's ``compute_partial_influences`` on the
full edge matrix: with ``N`` the row-normalized ``|A|`` and ``u₀`` the logit probabilities on
the logit rows, ``influence = Σ_t u_t N`` with ``u_{t+1} = (u_t N)`` read at the rows' own
nodes, until the walk dies out. Only the square part is iterated; the sum of the ``u_t`` is
applied to the full rows once.
"""

from __future__ import annotations

import torch

__all__ = ["RowStore"]

_MAX_ITER = 128


class RowStore:
    """Rows of an attribution in progress (see the module docstring)."""

    def __init__(self, offsets: list[int], row_size: int, capacity: int, device, dtype) -> None:
        self.offsets = list(offsets)
        self.n_layers = len(offsets) - 1
        self.capacity = int(capacity)
        self.dev, self.dt = device, dtype
        self.n = 0
        self.layer = torch.zeros(capacity, dtype=torch.long)  # n_layers: logit row
        self.node = torch.full((capacity,), -1, dtype=torch.long)  # feature index, or -1
        self.logit = torch.full((capacity,), -1, dtype=torch.long)  # logit index, or -1
        self.slot = torch.zeros(capacity, dtype=torch.long)  # row within its layer buffer
        self.et = torch.zeros(capacity, row_size, dtype=dtype, device=device)
        self.abs_sum = torch.zeros(capacity, dtype=dtype, device=device)
        self.square = torch.zeros(capacity, capacity, dtype=dtype, device=device)
        self.buffers: list[torch.Tensor] = [
            torch.zeros(0, self.offsets[lay], dtype=dtype, device=device)
            for lay in range(self.n_layers + 1)
        ]
        self.rows_of: list[list[int]] = [[] for _ in range(self.n_layers + 1)]

    def _append(self, lay: int, rows: torch.Tensor) -> torch.Tensor:
        used = len(self.rows_of[lay])
        buf = self.buffers[lay]
        if used + len(rows) > buf.shape[0]:
            grown = torch.zeros(
                max(2 * buf.shape[0], used + len(rows), 16),
                buf.shape[1],
                dtype=self.dt,
                device=self.dev,
            )
            grown[:used] = buf[:used]
            self.buffers[lay] = buf = grown
        buf[used : used + len(rows)] = rows
        return torch.arange(used, used + len(rows))

    def add(
        self,
        layers: torch.Tensor,
        nodes: torch.Tensor,
        logits: torch.Tensor,
        feats: torch.Tensor,
        et: torch.Tensor,
    ) -> None:
        """Add rows: target ``layers`` (``n_layers`` for logits), feature ``nodes`` (-1 for
        logits), ``logits`` (logit index, -1 for features), ``feats [R, ≥ offsets[L]]`` (each
        row's feature part, zero from ``offsets[L]`` on), ``et [R, row_size]``."""
        n0, n1 = self.n, self.n + len(layers)
        if n1 > self.capacity:
            raise RuntimeError(f"row store full ({self.capacity} rows)")
        ids = torch.arange(n0, n1)
        # old rows at the new nodes (before the new rows join the layer lists)
        new_f = torch.as_tensor(nodes, dtype=torch.long)
        for lay in range(self.n_layers + 1):
            old = self.rows_of[lay]
            sel = (new_f >= 0) & (new_f < self.offsets[lay])
            if not old or not sel.any():
                continue
            vals = self.buffers[lay][: len(old)][:, new_f[sel].to(self.dev)]
            old_t = torch.tensor(old, device=self.dev)
            self.square[old_t[:, None], ids[sel].to(self.dev)[None, :]] = vals.abs()
        self.layer[ids], self.node[ids], self.logit[ids] = layers, nodes, logits
        self.et[n0:n1] = et
        self.abs_sum[n0:n1] = feats.abs().sum(1) + et.abs().sum(1)
        width = feats.shape[1]
        for lay in layers.unique().tolist():
            m = layers == lay
            ids_l = ids[m]
            self.slot[ids_l] = self._append(lay, feats[m.to(feats.device), : self.offsets[lay]])
            self.rows_of[lay].extend(ids_l.tolist())
        self.n = n1
        # new rows at every node that has a row (including the new ones)
        cols = torch.arange(n1)
        fcols = self.node[:n1]
        ok = (fcols >= 0) & (fcols < width)
        sq = torch.zeros(n1 - n0, n1, dtype=self.dt, device=self.dev)
        sq[:, cols[ok].to(self.dev)] = feats[:, fcols[ok].to(feats.device)].abs()
        self.square[n0:n1, :n1] = sq

    def influence(self, logit_probs: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        """Influence of every active feature on the logits (circuit-tracer's ranking)."""
        n = self.n
        norm = self.abs_sum[:n].clamp(min=1e-8)
        u = torch.zeros(n, dtype=self.dt, device=self.dev)
        is_logit = self.logit[:n] >= 0
        u[is_logit.to(self.dev)] = logit_probs.to(self.dt).to(self.dev)[
            self.logit[:n][is_logit].to(self.dev)
        ]
        total = torch.zeros_like(u)
        sq = self.square[:n, :n]
        for _ in range(_MAX_ITER):
            total += u
            u = (u / norm) @ sq
            if not u.any():
                break
        else:
            raise RuntimeError(f"influence did not converge in {_MAX_ITER} iterations")
        weight = total / norm
        infl = torch.zeros(self.offsets[-1], dtype=self.dt, device=self.dev)
        for lay in range(self.n_layers + 1):
            rows = self.rows_of[lay]
            if not rows or not self.offsets[lay]:
                continue
            w = weight[torch.tensor(rows, device=self.dev)]
            buf = self.buffers[lay]
            acc = torch.zeros(self.offsets[lay], dtype=self.dt, device=self.dev)
            for s in range(0, len(rows), chunk):
                acc += w[s : s + chunk] @ buf[s : min(s + chunk, len(rows))].abs()
            infl[: self.offsets[lay]] += acc
        return infl

    def assemble(
        self,
        selected: torch.Tensor,
        n_logits: int,
        extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The dense adjacency in circuit-tracer's node order: rows of the selected features
        (ascending) and of the logits, columns [selected features, errors, tokens, logits].

        ``extra``: ``(nodes, feats [R, n_selected], et [R, row_size])``, rows computed for the
        selected features' columns only and kept out of the store (the last queue: nothing
        ranks them)."""
        n_sel = len(selected)
        row_size = self.et.shape[1]
        n_nodes = n_sel + row_size + n_logits
        adj = torch.zeros(n_nodes, n_nodes, dtype=self.dt, device=self.dev)
        rank = torch.full((self.offsets[-1] + 1,), -1, dtype=torch.long)
        rank[selected] = torch.arange(n_sel)
        n = self.n
        target = torch.where(
            self.logit[:n] >= 0, n_sel + row_size + self.logit[:n], rank[self.node[:n]]
        )
        if (target < 0).any():
            raise RuntimeError("a computed row belongs to no selected feature")
        sel_dev = selected.to(self.dev)
        for lay in range(self.n_layers + 1):
            rows = self.rows_of[lay]
            if not rows:
                continue
            rows_t = torch.tensor(rows)
            keep = selected < self.offsets[lay]
            block = torch.zeros(len(rows), n_sel, dtype=self.dt, device=self.dev)
            used = self.buffers[lay][self.slot[rows_t].to(self.dev)]
            block[:, keep.to(self.dev)] = used[:, sel_dev[keep.to(self.dev)]]
            adj[target[rows_t].to(self.dev), :n_sel] = block
        adj[target.to(self.dev), n_sel : n_sel + row_size] = self.et[:n]
        if extra is not None:
            nodes, feats, et = extra
            rows = rank[nodes]
            if (rows < 0).any():
                raise RuntimeError("a computed row belongs to no selected feature")
            rows = rows.to(self.dev)
            adj[rows, :n_sel] = feats
            adj[rows, n_sel : n_sel + row_size] = et
        return adj

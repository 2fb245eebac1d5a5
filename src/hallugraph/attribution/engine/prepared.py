"""One prompt's replacement model as the sweeps read it (built by
:func:`hallugraph.attribution.engine.sweep.prepare`): active features in circuit-tracer's order,
their activations and decoder rows, error vectors, token vectors and the frozen norm scales."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Prepared"]


@dataclass
class Prepared:
    """One prompt's active features, error and token vectors (see the module docstring)."""

    n_layers: int
    n_pos: int
    feat_layer: torch.Tensor  # [F] long
    feat_pos: torch.Tensor  # [F] long
    feat_idx: torch.Tensor  # [F] long (transcoder feature id)
    values: torch.Tensor  # [F]
    w_dec: list[torch.Tensor]  # per layer: the transcoder's W_dec (not a copy)
    offsets: list[int]  # [L + 1]: features of layer l are offsets[l]:offsets[l + 1]
    pos_starts: torch.Tensor  # [L, P + 1]: within-layer start of each position's features
    errors: torch.Tensor  # [L, P, d]
    token_vectors: torch.Tensor  # [P, d]
    scale_ln1: torch.Tensor  # [L, P, d]: w_ln1 · s_ln1 (the frozen norm as a linear map)
    scale_ln2: torch.Tensor  # [L, P, d]
    scale_final: torch.Tensor  # [P, d]
    _decoders: list[torch.Tensor | None] | None = None

    def decoders(self, layer: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``layer``'s active decoder rows scaled by their activations ``[F_l, d]`` (or
        those of the within-layer indices ``rows``), as circuit-tracer's ``decode_sparse``
        computes them; gathered on demand unless :meth:`keep_decoders` kept them."""
        kept = self._decoders[layer] if self._decoders is not None else None
        if kept is not None:
            return kept if rows is None else kept[rows]
        s, e = self.offsets[layer], self.offsets[layer + 1]
        sel = torch.arange(s, e) if rows is None else rows.cpu() + s
        idx = self.feat_idx[sel].to(self.w_dec[layer].device)
        return torch.index_select(self.w_dec[layer], 0, idx).mul_(
            self.values[sel.to(idx.device), None]
        )

    def keep_decoders(self) -> None:
        """Gather every layer's scaled decoder rows once (for rows read in full repeatedly)."""
        if self._decoders is None:
            self._decoders = [None] * self.n_layers
            for lay in range(self.n_layers):
                self._decoders[lay] = self.decoders(lay)

    @property
    def n_features(self) -> int:
        return int(self.offsets[-1])

    @property
    def row_size(self) -> int:
        """Columns of the error + token part of a row."""
        return (self.n_layers + 1) * self.n_pos

"""Reading a backward sweep's gradient into attribution rows: at each layer's MLP output the
gradient ``[positions, rows, d]`` is contracted with that layer's scaled decoder rows (one
matrix product per position) and its error vectors, at the bottom with the token vectors; or,
for the narrow last queue, with the chosen feature columns only (see
:func:`hallugraph.attribution.engine.sweep.compute_rows`)."""

from __future__ import annotations

import torch

from hallugraph.attribution.engine.prepared import Prepared

__all__ = [
    "column_picks",
    "read_columns",
    "read_errors_into",
    "read_layer",
    "read_rows",
    "read_tokens",
]


def read_rows(
    prep: Prepared, g: torch.Tensor, layer: int, feats: torch.Tensor, et: torch.Tensor
) -> None:
    """Contract ``g [pp, k, d]`` (the gradient at layer ``layer``'s MLP output) with that
    layer's decoder rows (per position) and error vectors, writing into ``feats`` / ``et``."""
    read_layer(g, prep.decoders(layer), prep.pos_starts[layer].tolist(), feats, prep.offsets[layer])
    read_errors_into(g, prep.errors[layer], layer, prep.n_pos, et)


def read_layer(g: torch.Tensor, dec: torch.Tensor, starts: list[int], feats, off: int) -> None:
    """``feats[:, off + j] = g[pos_j] · dec_j``, one matrix product per position."""
    for q in range(g.shape[0]):
        s, e = starts[q], starts[q + 1]
        if e > s:
            torch.mm(g[q], dec[s:e].T, out=feats[:, off + s : off + e])


def read_errors_into(g: torch.Tensor, err: torch.Tensor, layer: int, n_pos: int, et) -> None:
    pp = g.shape[0]
    et[:, layer * n_pos : layer * n_pos + pp] = torch.einsum("qrd,qd->rq", g, err[:pp])


def read_tokens(prep: Prepared, g: torch.Tensor, et: torch.Tensor) -> None:
    base, pp = prep.n_layers * prep.n_pos, g.shape[0]
    et[:, base : base + pp] = torch.einsum("qrd,qd->rq", g, prep.token_vectors[:pp])


def column_picks(
    prep: Prepared, columns: torch.Tensor
) -> list[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Per layer: ``(slice of columns, their positions, their scaled decoder rows)``."""
    bounds = torch.searchsorted(columns, torch.tensor(prep.offsets)).tolist()
    out = []
    for lay in range(prep.n_layers):
        s, e = bounds[lay], bounds[lay + 1]
        within = (columns[s:e] - prep.offsets[lay]).to(prep.errors.device)
        out.append(
            (
                slice(s, e),
                prep.feat_pos[columns[s:e]].to(prep.errors.device),
                prep.decoders(lay, within),
            )
        )
    return out


def read_columns(
    prep: Prepared,
    g: torch.Tensor,
    layer: int,
    pick: tuple[slice, torch.Tensor, torch.Tensor],
    feats: torch.Tensor,
    et: torch.Tensor,
) -> None:
    """:func:`_read` for the chosen columns only (see :func:`compute_rows`)."""
    cols, pos, dec = pick
    live = pos < g.shape[0]  # columns at positions no row reaches stay zero
    if live.all() and len(pos):
        feats[:, cols] = torch.einsum("jrd,jd->rj", g[pos], dec)
    elif live.any():
        idx = torch.arange(cols.start, cols.stop, device=pos.device)[live]
        feats[:, idx] = torch.einsum("jrd,jd->rj", g[pos[live]], dec[live])
    read_errors_into(g, prep.errors[layer], layer, prep.n_pos, et)

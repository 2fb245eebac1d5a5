"""Attribution rows by batched linear backward sweeps (no autograd).

:class:`Prepared` holds one prompt's replacement model: the active features of every layer in
circuit-tracer's order (layer, position, feature id), their encoder rows, their decoder rows
scaled by the activation, the error vectors (MLP output − reconstruction, with ``b_dec`` and the
skip) and the token embeddings; features and errors at position 0 are zeroed.

:func:`compute_rows` gives the direct effects of every source node on a batch of targets. A
target injects a vector into the residual stream (a feature: its encoder row at the MLP input of
its layer and position; a logit: its demeaned unembedding row at the final norm's output, last
position), and the sweep walks the layers downwards through what the replacement model leaves
linear: the residual stream, each attention's OV path (``o_proj``, the frozen pattern,
``v_proj``), the norms as fixed per-position scales, and ``W_skip``. At each MLP output the
gradient is contracted with the decoder rows of that layer's active features, one small matrix
product per position, and with the error vectors; at the bottom with the token embeddings.

Targets are processed sorted by layer (highest first), so a layer's step only touches the rows
already injected (the prefix of the batch), and only positions up to the batch's last one (the
attention is causal). A feature target at layer ``L`` has non-zero entries only for features
of layers below ``L``: :func:`compute_rows` returns each row's feature part up to the end of the
highest layer the batch reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hallugraph.attribution.engine.model import ForwardCache, LinearWeights
from hallugraph.attribution.engine.transcoders import EngineTranscoders

__all__ = ["Prepared", "compute_rows", "encoder_rows", "prepare"]

#: below this fraction of live (row, position) pairs, the projections skip the dead ones
_DENSE_ABOVE = 0.8


@dataclass
class Prepared:
    """One prompt's active features, error and token vectors (see the module docstring)."""

    n_layers: int
    n_pos: int
    feat_layer: torch.Tensor  # [F] long
    feat_pos: torch.Tensor  # [F] long
    feat_idx: torch.Tensor  # [F] long (transcoder feature id)
    values: torch.Tensor  # [F]
    decoders: list[torch.Tensor]  # per layer [F_l, d]: decoder rows scaled by the activation
    offsets: list[int]  # [L + 1]: features of layer l are offsets[l]:offsets[l + 1]
    pos_starts: torch.Tensor  # [L, P + 1]: within-layer start of each position's features
    errors: torch.Tensor  # [L, P, d]
    token_vectors: torch.Tensor  # [P, d]
    scale_ln1: torch.Tensor  # [L, P, d]: w_ln1 · s_ln1 (the frozen norm as a linear map)
    scale_ln2: torch.Tensor  # [L, P, d]
    scale_final: torch.Tensor  # [P, d]

    @property
    def n_features(self) -> int:
        return int(self.offsets[-1])

    @property
    def row_size(self) -> int:
        """Columns of the error + token part of a row."""
        return (self.n_layers + 1) * self.n_pos


@torch.no_grad()
def encoder_rows(prep: Prepared, transcoders: EngineTranscoders, idx: torch.Tensor) -> torch.Tensor:
    """The encoder rows of the active features ``idx`` (indices into the active features)."""
    out = []
    layers = prep.feat_layer[idx]
    for lay in layers.unique().tolist():
        m = layers == lay
        out.append((m, transcoders.layers[lay].W_enc[prep.feat_idx[idx[m]]]))
    d = out[0][1].shape[1]
    rows = torch.empty(len(idx), d, dtype=out[0][1].dtype, device=out[0][1].device)
    for m, r in out:
        rows[m.to(rows.device)] = r
    return rows


def prepare(
    cache: ForwardCache,
    weights: LinearWeights,
    transcoders: EngineTranscoders,
    tokens: torch.Tensor,
    zero_positions: slice = slice(0, 1),
) -> Prepared:
    """Encode every layer's transcoder input and build :class:`Prepared` (circuit-tracer's
    ``compute_attribution_components`` and error vectors, the same operations)."""
    n_layers, n_pos, d = cache.mlp_in.shape
    if transcoders.n_layers != n_layers:
        raise ValueError(f"{transcoders.n_layers} transcoders for a model of {n_layers} layers")
    layer_l, pos_l, idx_l, val_l, dec_l, err_l = [], [], [], [], [], []
    pos_starts = torch.zeros(n_layers, n_pos + 1, dtype=torch.long)
    offsets = [0]
    for layer, tc in enumerate(transcoders.layers):
        x = cache.mlp_in[layer] if transcoders.normalized_input else cache.resid_mid[layer]
        acts = tc.encode(x)
        acts[zero_positions] = 0
        pos, feat = acts.nonzero(as_tuple=True)
        vals = acts[pos, feat]
        dec = tc.W_dec[feat] * vals[:, None]
        recon = acts @ tc.W_dec  # = the sum of the scaled decoder rows at each position
        if tc.W_skip is not None:
            recon = recon + tc.skip(x)
        recon = recon + tc.b_dec
        err = cache.mlp_out[layer] - recon
        err[zero_positions] = 0
        layer_l.append(torch.full_like(pos, layer))
        pos_l.append(pos)
        idx_l.append(feat)
        val_l.append(vals)
        dec_l.append(dec)
        err_l.append(err)
        counts = torch.bincount(pos.cpu(), minlength=n_pos)
        pos_starts[layer, 1:] = torch.cumsum(counts, 0)
        offsets.append(offsets[-1] + len(pos))
    scale = lambda w, s: w[None, :] * s[:, None].to(w.dtype)  # noqa: E731
    return Prepared(
        n_layers=n_layers,
        n_pos=n_pos,
        feat_layer=torch.cat(layer_l).cpu(),
        feat_pos=torch.cat(pos_l).cpu(),
        feat_idx=torch.cat(idx_l).cpu(),
        values=torch.cat(val_l),
        decoders=dec_l,
        offsets=offsets,
        pos_starts=pos_starts,
        errors=torch.stack(err_l),
        token_vectors=weights.embed[torch.as_tensor(tokens).to(weights.embed.device)].detach(),
        scale_ln1=torch.stack(
            [scale(w, s) for w, s in zip(weights.w_ln1, cache.s_ln1, strict=True)]
        ),
        scale_ln2=torch.stack(
            [scale(w, s) for w, s in zip(weights.w_ln2, cache.s_ln2, strict=True)]
        ),
        scale_final=scale(weights.w_final, cache.s_final),
    )


def _attn_back(
    g: torch.Tensor,
    layer: int,
    cache: ForwardCache,
    w: LinearWeights,
    prep: Prepared,
    live: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Gradient at the attention block's input (through ln1, frozen) from ``g`` at its output.

    ``live``: the (row, position) pairs where ``g`` can be non-zero (a row's positions up to
    its own; the pattern is causal, so its result is zero elsewhere too): the two projections
    are then computed on those pairs only."""
    k, pp, d = g.shape
    h, hkv = w.n_heads, w.n_kv_heads
    if live is None:
        gz = g @ w.W_o[layer]  # [k, pp, H * dh]
    else:
        gz = g.new_zeros(k, pp, w.W_o[layer].shape[1])
        gz[live] = g[live] @ w.W_o[layer]
    dh = gz.shape[-1] // h
    gz = gz.view(k, pp, h, dh).permute(2, 1, 0, 3).reshape(h, pp, k * dh)
    pattern = cache.attn[layer, :, :pp, :pp]  # [H, q, key]
    gv = torch.bmm(pattern.transpose(1, 2), gz)  # [H, key, k * dh]
    gv = gv.view(hkv, h // hkv, pp, k, dh).sum(1)  # heads sharing a kv head
    gv = gv.permute(2, 1, 0, 3).reshape(k, pp, hkv * dh)
    if live is None:
        return (gv @ w.W_v[layer]) * prep.scale_ln1[layer, :pp]
    out = g.new_zeros(k, pp, d)
    out[live] = gv[live] @ w.W_v[layer]
    return out * prep.scale_ln1[layer, :pp]


@torch.no_grad()
def compute_rows(
    prep: Prepared,
    cache: ForwardCache,
    weights: LinearWeights,
    transcoders: EngineTranscoders,
    layers: torch.Tensor,
    positions: torch.Tensor,
    vectors: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the targets ``(layers[r], positions[r])`` injecting ``vectors[r]``; layer
    ``n_layers`` means a logit target (at the final norm's output).

    Returns ``(features [R, offsets[top]], errors_tokens [R, (L + 1) · P])`` where ``top`` is
    the highest layer whose features the batch reads (the batch's highest target layer).
    """
    n_layers, n_pos = prep.n_layers, prep.n_pos
    layers = torch.as_tensor(layers, dtype=torch.long).cpu()
    positions = torch.as_tensor(positions, dtype=torch.long).cpu()
    order = torch.argsort(layers, descending=True, stable=True)
    layers, positions, vectors = layers[order], positions[order], vectors[order.to(vectors.device)]
    n_rows = len(layers)
    top = int(layers[0])
    pp = int(positions.max()) + 1
    dev, dt = prep.errors.device, prep.errors.dtype
    feats = torch.zeros(n_rows, prep.offsets[min(top, n_layers)], dtype=dt, device=dev)
    et = torch.zeros(n_rows, prep.row_size, dtype=dt, device=dev)
    grad = torch.zeros(n_rows, pp, prep.errors.shape[2], dtype=dt, device=dev)
    logit = layers == n_layers
    if logit.any():
        rows = torch.nonzero(logit)[:, 0].to(dev)
        pos = positions[logit].to(dev)
        grad[rows, pos] = vectors[rows] * prep.scale_final[pos]
    # rows with layer > l / >= l form prefixes of the (sorted) batch
    n_above = [int((layers > lay).sum()) for lay in range(n_layers + 1)]
    n_from = [int((layers >= lay).sum()) for lay in range(n_layers + 1)]
    # a row is zero at positions after its own: skip them when that saves enough
    live_mask = torch.arange(pp)[None, :] <= positions[:, None]
    sparse = float(live_mask.float().mean()) < _DENSE_ABOVE
    for lay in range(min(top, n_layers - 1), -1, -1):
        k = n_above[lay]
        if k:
            _read(prep, grad[:k], lay, pp, feats[:k], et[:k])
        k_act = n_from[lay]
        g = grad[:k_act]
        tc = transcoders.layers[lay]
        gx = g @ tc.W_skip if tc.W_skip is not None else torch.zeros_like(g)
        inj = slice(k, k_act)
        if k_act > k:
            rows = torch.arange(k, k_act, device=dev)
            gx[rows, positions[inj].to(dev)] += vectors[inj]
        if transcoders.normalized_input:
            gx = gx * prep.scale_ln2[lay, :pp]
        g = g + gx
        live = None
        if sparse:
            live = tuple(t.to(dev) for t in live_mask[:k_act].nonzero(as_tuple=True))
        grad[:k_act] = g + _attn_back(g, lay, cache, weights, prep, live)
    base = n_layers * n_pos
    et[:, base : base + pp] = torch.einsum("rpd,pd->rp", grad, prep.token_vectors[:pp])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n_rows)
    inverse = inverse.to(dev)
    return feats[inverse], et[inverse]


def _read(
    prep: Prepared, g: torch.Tensor, layer: int, pp: int, feats: torch.Tensor, et: torch.Tensor
) -> None:
    """Contract ``g`` (the gradient at layer ``layer``'s MLP output) with that layer's decoder
    rows (per position) and error vectors, writing into ``feats`` / ``et``."""
    off = prep.offsets[layer]
    dec = prep.decoders[layer]
    starts = prep.pos_starts[layer].tolist()
    for q in range(pp):
        s, e = starts[q], starts[q + 1]
        if e > s:
            feats[:, off + s : off + e] = g[:, q] @ dec[s:e].T
    n_pos = prep.n_pos
    et[:, layer * n_pos : layer * n_pos + pp] = torch.einsum(
        "rpd,pd->rp", g, prep.errors[layer, :pp]
    )

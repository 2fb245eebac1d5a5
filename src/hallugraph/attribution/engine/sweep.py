"""Attribution rows by batched linear backward sweeps (no autograd).

:class:`Prepared` holds one prompt's replacement model: the active features of every layer in
circuit-tracer's order (layer, position, feature id) and activations (their decoder rows scaled
by the activation are gathered when read, or kept by :meth:`Prepared.keep_decoders`), the error
vectors (MLP output − reconstruction, with ``b_dec`` and the
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
already injected (the prefix of the batch), and only positions up to the last one of those rows
(the attention is causal: a row is zero after its own position); the gradient is kept
position-major so that both cuts are free slices. A feature target at layer ``L`` has non-zero
entries only for features of layers below ``L``: :func:`compute_rows` returns each row's feature
part up to the end of the highest layer the batch reads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hallugraph.attribution.engine.model import ForwardCache, LinearWeights
from hallugraph.attribution.engine.prepared import Prepared
from hallugraph.attribution.engine.read import (
    column_picks,
    read_columns,
    read_errors_into,
    read_layer,
    read_rows,
    read_tokens,
)
from hallugraph.attribution.engine.transcoders import EngineTranscoders

__all__ = ["Prepared", "compute_rows", "encoder_rows", "prepare", "prepare_with_logit_rows"]


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
    return _prepare(cache, weights, transcoders, tokens, zero_positions)[0]


@torch.no_grad()
def prepare_with_logit_rows(
    cache: ForwardCache,
    weights: LinearWeights,
    transcoders: EngineTranscoders,
    tokens: torch.Tensor,
    vectors: torch.Tensor,
    zero_positions: slice = slice(0, 1),
) -> tuple[Prepared, torch.Tensor, torch.Tensor]:
    """:func:`prepare`, and the rows of logit targets injecting ``vectors`` (as
    :func:`compute_rows` gives them): their sweep runs first (it needs no feature), and each
    layer's gradient is contracted with that layer's decoder rows while they are at hand, so
    that they are gathered once."""
    prep, feats, et = _prepare(cache, weights, transcoders, tokens, zero_positions, vectors)
    assert feats is not None and et is not None
    return prep, feats, et


def _prepare(cache, weights, transcoders, tokens, zero_positions, logit_vectors=None):
    n_layers, n_pos, d = cache.mlp_in.shape
    if transcoders.n_layers != n_layers:
        raise ValueError(f"{transcoders.n_layers} transcoders for a model of {n_layers} layers")
    scale = lambda w, s: w[None, :] * s[:, None].to(w.dtype)  # noqa: E731
    empty = torch.zeros(0, dtype=torch.long)
    prep = Prepared(
        n_layers=n_layers,
        n_pos=n_pos,
        feat_layer=empty,
        feat_pos=empty,
        feat_idx=empty,
        values=empty,
        w_dec=[tc.W_dec for tc in transcoders.layers],
        offsets=[0],
        pos_starts=torch.zeros(n_layers, n_pos + 1, dtype=torch.long),
        errors=empty,
        token_vectors=weights.embed[torch.as_tensor(tokens).to(weights.embed.device)].detach(),
        scale_ln1=torch.stack(
            [scale(w, s) for w, s in zip(weights.w_ln1, cache.s_ln1, strict=True)]
        ),
        scale_ln2=torch.stack(
            [scale(w, s) for w, s in zip(weights.w_ln2, cache.s_ln2, strict=True)]
        ),
        scale_final=scale(weights.w_final, cache.s_final),
    )
    grads: dict[int, torch.Tensor] = {}
    feats_l: list[torch.Tensor] = []
    et = final = None
    if logit_vectors is not None:  # the logit rows' sweep, gradients kept per layer
        n = len(logit_vectors)
        final = _sweep(
            prep,
            cache,
            weights,
            transcoders,
            torch.full((n,), n_layers),
            torch.full((n,), n_pos - 1),
            logit_vectors,
            lambda lay, g, k: grads.__setitem__(lay, g.clone()),
        )
        et = torch.zeros(n, prep.row_size, dtype=final.dtype, device=final.device)
    layer_l, pos_l, idx_l, val_l, err_l = [], [], [], [], []
    offsets = prep.offsets
    for layer, tc in enumerate(transcoders.layers):
        x = cache.mlp_in[layer] if transcoders.normalized_input else cache.resid_mid[layer]
        acts = tc.encode(x)
        acts[zero_positions] = 0
        pos, feat = acts.nonzero(as_tuple=True)
        vals = acts[pos, feat]
        del acts
        dec = torch.index_select(tc.W_dec, 0, feat).mul_(vals[:, None])  # = Prepared.decoders
        # circuit-tracer's decode_sparse: the scaled rows summed per position by index_add_
        err = torch.zeros(n_pos, d, dtype=dec.dtype, device=dec.device).index_add_(0, pos, dec)
        if tc.W_skip is not None:
            err = err + tc.skip(x)
        err = err + tc.b_dec
        err = torch.sub(cache.mlp_out[layer], err, out=err)
        err[zero_positions] = 0
        counts = torch.bincount(pos.cpu(), minlength=n_pos)
        prep.pos_starts[layer, 1:] = torch.cumsum(counts, 0)
        if et is not None:
            g = grads.pop(layer)
            feats_l.append(torch.zeros(g.shape[1], len(pos), dtype=dec.dtype, device=dec.device))
            read_layer(g, dec, prep.pos_starts[layer].tolist(), feats_l[-1], 0)
            read_errors_into(g, err, layer, n_pos, et)
        del dec
        layer_l.append(torch.full_like(pos, layer))
        pos_l.append(pos)
        idx_l.append(feat)
        val_l.append(vals)
        err_l.append(err)
        offsets.append(offsets[-1] + len(pos))
    prep.feat_layer = torch.cat(layer_l).cpu()
    prep.feat_pos = torch.cat(pos_l).cpu()
    prep.feat_idx = torch.cat(idx_l).cpu()
    prep.values = torch.cat(val_l)
    prep.errors = torch.stack(err_l)
    if et is None or final is None:
        return prep, None, None
    read_tokens(prep, final, et)
    return prep, torch.cat(feats_l, 1), et


def _attn_back(g: torch.Tensor, layer: int, cache: ForwardCache, w: LinearWeights) -> torch.Tensor:
    """Gradient at the attention block's input, before ln1's frozen scale, from ``g [pp, k, d]``
    (position-major) at its output: ``o_proj``, each head's ``[pp, k · dh]`` block made
    contiguous (as the pattern product needs it), the transposed frozen pattern with the heads
    that share a kv head stacked into one product (their sum), ``v_proj`` per kv head,
    accumulated."""
    pp, k, d = g.shape
    h, hkv = w.n_heads, w.n_kv_heads
    W_o, W_v = w.W_o[layer], w.W_v[layer]
    dh = W_o.shape[1] // h
    z = g.reshape(pp * k, d) @ W_o  # [pp * k, H * dh]
    gz = g.new_empty(h, pp, k, dh)
    gz.copy_(z.view(pp, k, h, dh).permute(2, 0, 1, 3))
    del z
    rep = h // hkv  # heads per kv head (consecutive, as HF's repeat_kv lays them out)
    pattern = cache.attn[layer, :, :pp, :pp].transpose(1, 2)  # [H, key, q]
    pattern = pattern.reshape(hkv, rep, pp, pp).transpose(1, 2).reshape(hkv, pp, rep * pp)
    gv = torch.bmm(pattern, gz.view(hkv, rep * pp, k * dh))  # [hkv, key, k * dh]
    out = torch.mm(gv[0].view(pp * k, dh), W_v[:dh])
    for j in range(1, hkv):
        out.addmm_(gv[j].view(pp * k, dh), W_v[j * dh : (j + 1) * dh])
    return out.view(pp, k, d)


@torch.no_grad()
def compute_rows(
    prep: Prepared,
    cache: ForwardCache,
    weights: LinearWeights,
    transcoders: EngineTranscoders,
    layers: torch.Tensor,
    positions: torch.Tensor,
    vectors: torch.Tensor,
    columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the targets ``(layers[r], positions[r])`` injecting ``vectors[r]``; layer
    ``n_layers`` means a logit target (at the final norm's output).

    Returns ``(features [R, offsets[top]], errors_tokens [R, (L + 1) · P])`` where ``top`` is
    the highest layer whose features the batch reads (the batch's highest target layer).
    With ``columns`` (ascending indices into the active features), ``features`` is
    ``[R, len(columns)]``: only those features' entries are computed (rows nothing ranks
    again need only the selected features' columns).
    """
    n_layers = prep.n_layers
    layers = torch.as_tensor(layers, dtype=torch.long).cpu()
    order = torch.argsort(layers, descending=True, stable=True)
    layers = layers[order]
    positions = torch.as_tensor(positions, dtype=torch.long).cpu()[order]
    vectors = vectors[order.to(vectors.device)]
    n_rows, top = len(layers), int(layers[0])
    dev, dt = prep.scale_final.device, prep.scale_final.dtype
    if columns is None:
        feats = torch.zeros(n_rows, prep.offsets[min(top, n_layers)], dtype=dt, device=dev)

        def reader(lay: int, g: torch.Tensor, k: int) -> None:
            read_rows(prep, g, lay, feats[:k], et[:k])
    else:
        feats = torch.zeros(n_rows, len(columns), dtype=dt, device=dev)
        picks = column_picks(prep, torch.as_tensor(columns, dtype=torch.long).cpu())

        def reader(lay: int, g: torch.Tensor, k: int) -> None:
            read_columns(prep, g, lay, picks[lay], feats[:k], et[:k])

    et = torch.zeros(n_rows, prep.row_size, dtype=dt, device=dev)
    grad = _sweep(prep, cache, weights, transcoders, layers, positions, vectors, reader)
    read_tokens(prep, grad, et)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n_rows)
    inverse = inverse.to(dev)
    return feats[inverse], et[inverse]


def _sweep(
    prep: Prepared,
    cache: ForwardCache,
    weights: LinearWeights,
    transcoders: EngineTranscoders,
    layers: torch.Tensor,
    positions: torch.Tensor,
    vectors: torch.Tensor,
    reader: Callable[[int, torch.Tensor, int], None],
) -> torch.Tensor:
    """The backward sweep of targets sorted by layer (highest first): at each layer's MLP
    output, ``reader(layer, gradient, k)`` (``gradient [pp, k, d]``: the ``k`` rows injected
    above it); returns the gradient at the embeddings (``[pp, R, d]``).

    The gradient is kept position-major, ``[positions, rows injected so far, d]``: a layer's
    step runs on the positions up to the last one of the rows injected so far (a prefix, free
    to slice), and the array grows when rows join. Needs only the scales of ``prep``."""
    n_layers = prep.n_layers
    dev, dt = prep.scale_final.device, prep.scale_final.dtype
    d = prep.scale_final.shape[1]
    top = int(layers[0])
    # rows with layer > l / >= l form prefixes of the (sorted) batch
    n_above = [int((layers > lay).sum()) for lay in range(n_layers + 1)]
    n_from = [int((layers >= lay).sum()) for lay in range(n_layers + 1)]
    # positions a prefix of k rows reaches (rows are zero after their own position)
    reach = (torch.cummax(positions, 0).values + 1).tolist()
    pos_dev = positions.to(dev)
    n_logit = n_above[n_layers - 1]  # the logit rows come first
    grad = torch.zeros(reach[n_logit - 1] if n_logit else 0, n_logit, d, dtype=dt, device=dev)
    if n_logit:
        pos = pos_dev[:n_logit]
        grad[pos, torch.arange(n_logit, device=dev)] = vectors[:n_logit] * prep.scale_final[pos]
    for lay in range(min(top, n_layers - 1), -1, -1):
        k, k_act = n_above[lay], n_from[lay]
        if k:
            reader(lay, grad, k)
        if k_act == 0:
            continue
        if k_act > k:  # rows join: grow the gradient
            grown = torch.zeros(reach[k_act - 1], k_act, d, dtype=dt, device=dev)
            grown[: grad.shape[0], :k] = grad
            grad = grown
        pp = grad.shape[0]
        tc = transcoders.layers[lay]
        inj_pos, inj_rows = pos_dev[k:k_act], torch.arange(k, k_act, device=dev)
        if tc.W_skip is not None:
            gx = (grad.view(pp * k_act, d) @ tc.W_skip).view(pp, k_act, d)
            gx[inj_pos, inj_rows] += vectors[k:k_act]
            if transcoders.normalized_input:
                gx.mul_(prep.scale_ln2[lay, :pp, None])
            grad.add_(gx)
        elif k_act > k:
            inj = vectors[k:k_act]
            if transcoders.normalized_input:
                inj = inj * prep.scale_ln2[lay, inj_pos]
            grad[inj_pos, inj_rows] += inj
        grad.addcmul_(_attn_back(grad, lay, cache, weights), prep.scale_ln1[lay, :pp, None])
    return grad

"""The previous trainer (dense float32 ReLU transcoders, L1 penalty, one Adam step per layer
on activations from a float32 eager forward), kept as the baseline of
``benchmarks/transcoder_speed.py``. Not used by ``hallugraph transcoders train``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["LegacyTranscoder", "layer_activations", "legacy_step"]


class LegacyTranscoder(nn.Module):
    """One layer's dense ReLU transcoder in normalized units (the old ``Transcoder``)."""

    def __init__(self, d_model: int, width: int) -> None:
        super().__init__()
        self.W_enc = nn.Parameter(torch.randn(width, d_model) / math.sqrt(d_model))
        self.b_enc = nn.Parameter(torch.zeros(width))
        w_dec = torch.randn(width, d_model)
        self.W_dec = nn.Parameter(0.1 * w_dec / w_dec.norm(dim=1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("in_scale", torch.ones(()))
        self.register_buffer("out_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.relu(x @ self.W_enc.T + self.b_enc)
        sparsity = (a * self.W_dec.norm(dim=1)).sum(-1) / x.shape[-1]
        return a @ self.W_dec + self.b_dec, a, sparsity


@torch.no_grad()
def layer_activations(
    model: Any, ids: Sequence[Sequence[int]], pad: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """MLP inputs and outputs of every layer (float32), position 0 and padding left out, from
    a full forward of the causal LM (the old way: LM head included)."""
    n = max(len(s) for s in ids)
    batch = torch.full((len(ids), n), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, s in enumerate(ids):
        batch[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    keep = mask.bool().clone()
    keep[:, 0] = False
    ins: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    handles = []
    for layer in model.model.layers:
        norm, mlp = layer.post_attention_layernorm, layer.mlp
        handles.append(norm.register_forward_hook(lambda m, a, o: ins.append(o[keep].float())))
        handles.append(mlp.register_forward_hook(lambda m, a, o: outs.append(o[keep].float())))
    try:
        model(input_ids=batch, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ins, outs


def legacy_step(
    model: Any,
    tcs: Sequence[LegacyTranscoder],
    opts: Sequence[torch.optim.Optimizer],
    ids: Sequence[Sequence[int]],
    pad: int,
    sparsity: float = 1.0,
    first: bool = False,
) -> int:
    """One training step of the old trainer over all layers; returns the tokens used."""
    ins, outs = layer_activations(model, ids, pad)
    d = ins[0].shape[-1]
    for i, (tc, opt) in enumerate(zip(tcs, opts, strict=True)):
        x, y = ins[i], outs[i]
        if first:
            with torch.no_grad():
                tc.in_scale.fill_(float(x.pow(2).sum(-1).mean().div(d).sqrt()))
                tc.out_scale.fill_(float(y.pow(2).sum(-1).mean().div(d).sqrt()))
                tc.b_dec.copy_((y / tc.out_scale).mean(0))
        rec, _, sp = tc(x / tc.in_scale)
        loss = (rec - y / tc.out_scale).pow(2).sum(-1).mean() / d + sparsity * sp.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return int(ins[0].shape[0])

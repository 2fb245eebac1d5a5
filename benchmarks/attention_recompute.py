"""Is attention redundant given the hidden states? Fidelity of recomputing it from fp16 ones.

Each attention map is a function of its layer's input hidden state (RMSNorm, q/k projections,
RoPE, causal softmax), so a store could keep the hidden states plus the q/k weights once per
run and recompute the maps on read: about 1/8 of the seed's record instead of 1/4.2
(see docs/BENCHMARKS.md). This script measures what that would cost in fidelity on stored
traces: against an fp32 forward pass over the stored tokens, the error of the fp16-stored maps
versus the error of maps recomputed from the fp16-stored hidden states.

    .venv/bin/python benchmarks/attention_recompute.py runs/bench/triviaqa --num-traces 20
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from hallugraph.models import load_model
from hallugraph.store import TraceStore


def recompute(model, hidden: torch.Tensor) -> list[torch.Tensor]:
    """Causal attention maps ``[heads, S, S]`` of every layer from its input hidden state."""
    S = hidden.shape[1]
    pos = torch.arange(S)[None]
    mask = torch.triu(torch.full((S, S), float("-inf")), 1)
    maps = []
    for layer_idx, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden[layer_idx][None])
        q = attn.q_proj(x).view(1, S, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(1, S, -1, attn.head_dim).transpose(1, 2)
        cos, sin = model.model.rotary_emb(x, pos)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, attn.num_key_value_groups)
        maps.append(((q @ k.transpose(-1, -2)) * attn.scaling + mask).softmax(-1)[0])
    return maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a run directory with raw tensors (extract --keep-tensors yes)")
    ap.add_argument("--num-traces", type=int, default=20)
    args = ap.parse_args()
    store = TraceStore(args.run)
    lm = load_model(store.info.get("model", "smollm2_135M"), dtype="float32", device="cpu")
    stored_err, recomputed_err = [], []
    for i in range(min(args.num_traces, len(store))):
        t = store[i]
        ids = torch.tensor(np.asarray(t["tokens"]))[None]
        with torch.no_grad():
            ref = lm.model(ids, output_attentions=True).attentions
            maps = recompute(lm.model, torch.from_numpy(t["hidden_states"].astype(np.float32)))
        for layer_idx in range(len(ref)):
            r = ref[layer_idx][0]
            stored = torch.from_numpy(t["attentions"][layer_idx].astype(np.float32))
            stored_err.append((stored - r).abs().max().item())
            recomputed_err.append((maps[layer_idx] - r).abs().max().item())
    s, r = np.array(stored_err), np.array(recomputed_err)
    print(f"{args.num_traces} traces x {len(ref)} layers, max |error| against an fp32 forward:")
    print(f"  fp16-stored attention          : max {s.max():.2e}  median {np.median(s):.2e}")
    print(f"  recomputed from fp16 hidden    : max {r.max():.2e}  median {np.median(r):.2e}")
    print(f"  ratio recomputed / stored (max): {r.max() / s.max():.1f}x")


if __name__ == "__main__":
    main()

"""The one eager forward of a Llama-family model that the linear backward needs.

Under circuit-tracer's local replacement model the attention patterns and the RMSNorm scales
(``rsqrt(mean(x²) + ε)``) are frozen and the MLPs are replaced by transcoders, so the map from
the residual stream's writers to any read-out is linear. :func:`frozen_forward` runs the
HuggingFace model once (eager attention) and keeps exactly what that linear map needs:

* ``attn [L, H, P, P]``: attention probabilities (after softmax, i.e. what circuit-tracer
  detaches at the dropout),
* ``s_ln1, s_ln2 [L, P]``, ``s_final [P]``: the norms' frozen scales,
* ``mlp_in [L, P, d]`` (``post_attention_layernorm`` output), ``resid_mid [L, P, d]`` (its
  input), ``mlp_out [L, P, d]``, and the logits of the last position.

:class:`LinearWeights` holds the weights of the linear paths: ``v_proj`` and ``o_proj`` (the OV
circuit), the three norms' weights, the embedding and the unembedding.
Supported: ``LlamaForCausalLM`` and architectures with the same layer layout (Qwen2/Qwen3:
their q/k norms and biases only touch the frozen patterns).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ForwardCache", "LinearWeights", "frozen_forward", "linear_weights", "load_hf_model"]

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")


def load_hf_model(
    model_dir: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local Llama-family checkpoint, eager attention, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, attn_implementation="eager"
    )
    arch = type(model).__name__
    if arch not in SUPPORTED:
        raise ValueError(f"{model_dir}: architecture {arch} not supported ({', '.join(SUPPORTED)})")
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(model_dir))


@dataclass
class LinearWeights:
    """The weights the frozen backward goes through (float, on the model's device)."""

    W_v: list[torch.Tensor]  # [n_kv * d_head, d] per layer
    W_o: list[torch.Tensor]  # [d, n_heads * d_head] per layer
    w_ln1: list[torch.Tensor]  # [d]
    w_ln2: list[torch.Tensor]  # [d]
    w_final: torch.Tensor  # [d]
    embed: torch.Tensor  # [vocab, d]
    unembed: torch.Tensor  # [vocab, d]
    n_heads: int
    n_kv_heads: int

    @property
    def n_layers(self) -> int:
        return len(self.W_v)

    @property
    def d_model(self) -> int:
        return int(self.embed.shape[1])


def linear_weights(model: Any) -> LinearWeights:
    """The :class:`LinearWeights` of a loaded HF model."""
    m = model.model
    cfg = model.config
    layers = list(m.layers)
    return LinearWeights(
        W_v=[lay.self_attn.v_proj.weight for lay in layers],
        W_o=[lay.self_attn.o_proj.weight for lay in layers],
        w_ln1=[lay.input_layernorm.weight for lay in layers],
        w_ln2=[lay.post_attention_layernorm.weight for lay in layers],
        w_final=m.norm.weight,
        embed=m.embed_tokens.weight,
        unembed=model.lm_head.weight,
        n_heads=int(cfg.num_attention_heads),
        n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
    )


@dataclass
class ForwardCache:
    """What :func:`frozen_forward` keeps (batch dimension dropped)."""

    attn: torch.Tensor  # [L, H, P, P]
    s_ln1: torch.Tensor  # [L, P]
    s_ln2: torch.Tensor  # [L, P]
    s_final: torch.Tensor  # [P]
    mlp_in: torch.Tensor  # [L, P, d]
    resid_mid: torch.Tensor  # [L, P, d]
    mlp_out: torch.Tensor  # [L, P, d]
    last_logits: torch.Tensor  # [vocab]
    position_logits: torch.Tensor | None = None  # [m, vocab]: the ``logit_positions`` asked for


def _rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The frozen RMSNorm scale, computed as HF's LlamaRMSNorm does (in float32)."""
    var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return torch.rsqrt(var + eps)[..., 0]


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


@torch.no_grad()
def frozen_forward(
    model: Any, tokens: torch.Tensor, logit_positions: list[int] | None = None
) -> ForwardCache:
    """Run ``tokens [P]`` through ``model`` once and keep what the linearization freezes
    (and the logits at ``logit_positions`` too, when given)."""
    m = model.model
    layers = list(m.layers)
    store: dict[str, list[Any]] = {
        k: [None] * len(layers) for k in ("a", "s1", "s2", "i", "r", "o")
    }
    final: list[torch.Tensor] = []
    handles = []

    def pre(key: str, i: int, norm: Any):
        def hook(_mod, args, kwargs=None):
            x = args[0] if args else kwargs["hidden_states"]
            store[key][i] = _rms_scale(x, _eps(norm))[0]
            if key == "s2":
                store["r"][i] = x[0]

        return hook

    def post(key: str, i: int):
        def hook(_mod, _args, out):
            if key == "a":
                if not isinstance(out, tuple) or out[1] is None:
                    raise RuntimeError("attention probabilities not returned: load with eager")
                store["a"][i] = out[1][0]
            else:
                store[key][i] = (out[0] if isinstance(out, tuple) else out)[0]

        return hook

    try:
        for i, lay in enumerate(layers):
            handles.append(
                lay.input_layernorm.register_forward_pre_hook(pre("s1", i, lay.input_layernorm))
            )
            ln2 = lay.post_attention_layernorm
            handles.append(ln2.register_forward_pre_hook(pre("s2", i, ln2)))
            handles.append(ln2.register_forward_hook(post("i", i)))
            handles.append(lay.self_attn.register_forward_hook(post("a", i)))
            handles.append(lay.mlp.register_forward_hook(post("o", i)))
        handles.append(
            m.norm.register_forward_pre_hook(
                lambda _mod, args: final.append(_rms_scale(args[0], _eps(m.norm))[0])
            )
        )
        ids = (
            torch.as_tensor(tokens, dtype=torch.long)
            .reshape(1, -1)
            .to(m.embed_tokens.weight.device)
        )
        hidden = m(input_ids=ids, use_cache=False).last_hidden_state
        last_logits = model.lm_head(hidden[0, -1:])[0]  # only the last position is attributed
        at = None if logit_positions is None else model.lm_head(hidden[0, list(logit_positions)])
    finally:
        for h in handles:
            h.remove()
    return ForwardCache(
        attn=torch.stack(store["a"]),
        s_ln1=torch.stack(store["s1"]),
        s_ln2=torch.stack(store["s2"]),
        s_final=final[0],
        mlp_in=torch.stack(store["i"]),
        resid_mid=torch.stack(store["r"]),
        mlp_out=torch.stack(store["o"]),
        last_logits=last_logits,
        position_logits=at,
    )

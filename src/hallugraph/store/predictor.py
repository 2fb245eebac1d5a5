"""The predictive codec's predictor: the model's own computation of each layer from the previous
stored one (fp32 on CPU, the same code for encoder and decoder), and the predictor of a run."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hallugraph.extract.packing import PACK_MAX_BYTES, pack_weight, packed_linear
from hallugraph.store.integrity import StoreError

CODEC_VERSION = 1
"""Version of the predictive codec's format (and of the prediction it encodes against)."""

KERNELS = ("onednn", "aten")  # how the prediction's matmuls run: both decode what they encode


# --------------------------------------------------------------------------- the predictor


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _base_model(model: Any) -> Any:
    model = getattr(model, "model", model)  # LoadedModel -> *ForCausalLM
    base = getattr(model, "model", model)  # *ForCausalLM -> the decoder stack
    for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(base, attr):
            raise StoreError(
                f"the predictive codec needs a Llama-family model (embed_tokens, layers, norm, "
                f"rotary_emb); {type(base).__name__} has no {attr}"
            )
    return base


def _cpu32(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().to(device="cpu", dtype=torch.float32)


class Predictor:
    """The per-layer prediction of a trace, in fp32 on the CPU, from a Llama-family model.

    ``model`` is a :class:`hallugraph.models.LoadedModel`, a ``*ForCausalLM`` or its decoder
    stack (Llama, Qwen2/2.5/3, Mistral without sliding window, SmolLM2 ...). fp32 CPU weights
    are used in place; other dtypes/devices are copied to fp32 CPU. Quantized models are
    refused (their dequantized weights are not reproducible on read).
    """

    def __init__(self, model: Any, kernel: str = "auto") -> None:
        if kernel not in KERNELS + ("auto",):
            raise StoreError(f"unknown predictor kernel {kernel!r} (one of {KERNELS})")
        base = _base_model(model)
        quantized = getattr(base.config, "quantization_config", None) is not None
        if quantized or any(not p.is_floating_point() for p in base.parameters()):
            raise StoreError("the predictive codec needs unquantized weights (not --quantize)")
        cfg = base.config
        self.num_layers = len(base.layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.num_heads)
        self.hidden_size = int(cfg.hidden_size)
        act = getattr(cfg, "hidden_act", "silu")
        from transformers.activations import ACT2FN

        self.act = ACT2FN[act]
        self.tensors: dict[str, torch.Tensor] = {}
        self.eps: dict[str, float] = {}

        def keep(name: str, t: torch.Tensor | None) -> None:
            if t is not None:
                self.tensors[name] = _cpu32(t)

        def norm(name: str, module: Any) -> None:
            keep(name, module.weight)
            self.eps[name] = float(getattr(module, "variance_epsilon", getattr(module, "eps", 0)))

        keep("embed", base.embed_tokens.weight)
        self.layers: list[dict[str, Any]] = []
        for i, layer in enumerate(base.layers):
            attn, mlp = layer.self_attn, layer.mlp
            try:
                for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    keep(f"{i}.{proj}.w", getattr(attn, proj).weight)
                    keep(f"{i}.{proj}.b", getattr(attn, proj).bias)
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    keep(f"{i}.{proj}.w", getattr(mlp, proj).weight)
                    keep(f"{i}.{proj}.b", getattr(mlp, proj).bias)
                norm(f"{i}.input_norm", layer.input_layernorm)
                norm(f"{i}.post_norm", layer.post_attention_layernorm)
            except AttributeError as err:
                raise StoreError(
                    f"the predictive codec does not support this model: {err}"
                ) from err
            for qk in ("q_norm", "k_norm"):
                if getattr(attn, qk, None) is not None:
                    norm(f"{i}.{qk}", getattr(attn, qk))
            head_dim = int(getattr(attn, "head_dim", self.hidden_size // self.num_heads))
            self.layers.append(
                {"head_dim": head_dim, "scaling": float(getattr(attn, "scaling", head_dim**-0.5))}
            )
        norm("final_norm", base.norm)
        self.rotary = copy.deepcopy(base.rotary_emb).to("cpu")
        self._fingerprint: str | None = None
        self.packed: dict[str, torch.Tensor] = {}
        if kernel != "aten":
            weights = {n: t for n, t in self.tensors.items() if n.endswith(".w")}
            fits = sum(t.numel() * 4 for t in weights.values()) <= PACK_MAX_BYTES
            packed = {n: pack_weight(t) for n, t in weights.items()} if fits else {}
            if packed and all(v is not None for v in packed.values()):
                self.packed = packed
            elif kernel == "onednn":
                raise StoreError(
                    "this run was encoded with oneDNN-packed matmuls (codec_kernel onednn), which "
                    "this torch build cannot run (or the model is over the packing size limit)"
                )
        self.kernel = "onednn" if self.packed else "aten"

    @property
    def fingerprint(self) -> str:
        """:func:`weights_fingerprint` of the weights the prediction uses (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self)
        return self._fingerprint

    def rope(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE ``cos, sin`` ``[seq_len, head_dim]`` for positions ``0..seq_len-1``."""
        x = torch.zeros((1, seq_len, 1), dtype=torch.float32)
        with torch.inference_mode():
            cos, sin = self.rotary(x, torch.arange(seq_len)[None])
        return cos[0].float(), sin[0].float()

    @torch.inference_mode()
    def embeddings(self, tokens: Sequence[int], start: int = 0) -> np.ndarray:
        """Prediction of ``h_0`` rows ``start..S-1``: the token embeddings in fp16."""
        ids = torch.as_tensor(list(tokens)[start:], dtype=torch.long)
        return self.tensors["embed"][ids].to(torch.float16).numpy()

    @torch.inference_mode()
    def layer(
        self,
        index: int,
        hidden: np.ndarray,
        start: int,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict layer ``index``'s output and attention rows ``start..S-1`` from its input.

        ``hidden`` is the layer's stored fp16 input ``[S, H]`` (all rows: the prefix rows are
        keys and values). Returns fp16 ``[S - start, H]`` (through the final norm for the last
        layer) and the packed lower-triangle attention rows ``[heads, tril(S) - tril(start)]``.
        """
        T, E, L = self.tensors, self.eps, self.layers[index]
        S = hidden.shape[0]
        d, nh, nkv = L["head_dim"], self.num_heads, self.num_kv_heads
        x = torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float16)).float()
        cos, sin = rope

        def lin(name: str, v: torch.Tensor) -> torch.Tensor:
            w, b = f"{index}.{name}.w", T.get(f"{index}.{name}.b")
            if self.packed:
                return packed_linear(v, self.packed[w], b)
            return torch.nn.functional.linear(v, T[w], b)

        xn = _rms_norm(x, T[f"{index}.input_norm"], E[f"{index}.input_norm"])
        q = lin("q_proj", xn[start:]).view(S - start, nh, d).transpose(0, 1)
        k = lin("k_proj", xn).view(S, nkv, d).transpose(0, 1)
        v = lin("v_proj", xn).view(S, nkv, d).transpose(0, 1)
        if f"{index}.q_norm" in T:
            q = _rms_norm(q, T[f"{index}.q_norm"], E[f"{index}.q_norm"])
            k = _rms_norm(k, T[f"{index}.k_norm"], E[f"{index}.k_norm"])
        q = q * cos[start:] + _rotate_half(q) * sin[start:]
        k = k * cos + _rotate_half(k) * sin
        g = nh // nkv  # query heads per key/value head (kv head j serves heads j*g .. j*g+g-1)
        scores = torch.matmul(q.reshape(nkv, g * (S - start), d), k.transpose(1, 2))
        scores = scores.view(nh, S - start, S) * L["scaling"]
        causal = torch.ones((S - start, S), dtype=torch.bool).tril(start)
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        o = torch.matmul(probs.view(nkv, g * (S - start), S), v).view(nh, S - start, d)
        h = x[start:] + lin("o_proj", o.transpose(0, 1).reshape(S - start, nh * d))
        hn = _rms_norm(h, T[f"{index}.post_norm"], E[f"{index}.post_norm"])
        h = h + lin("down_proj", self.act(lin("gate_proj", hn)) * lin("up_proj", hn))
        if index == self.num_layers - 1:
            h = _rms_norm(h, T["final_norm"], E["final_norm"])
        return h.to(torch.float16).numpy(), probs[:, causal].to(torch.float16).numpy()


def weights_fingerprint(model: Any) -> str:
    """blake2b (hex, 16 bytes) of every fp32 weight a :class:`Predictor` uses, in a fixed order.

    Names, shapes, bytes, norm epsilons, attention scalings and the RoPE frequencies all enter,
    so a reader with other weights (or another RoPE setup) is refused before decoding.
    """
    pred = model if isinstance(model, Predictor) else Predictor(model)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"hallugraph-predictive-v{CODEC_VERSION}".encode())
    for name in sorted(pred.tensors):
        t = pred.tensors[name].contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    h.update(repr(sorted(pred.eps.items())).encode())
    h.update(repr([(la["head_dim"], la["scaling"]) for la in pred.layers]).encode())
    cos, sin = pred.rope(8)
    h.update(cos.numpy().tobytes() + sin.numpy().tobytes())
    h.update(f"{pred.num_heads},{pred.num_kv_heads},{pred.act.__class__.__name__}".encode())
    return h.hexdigest()


def as_predictor(model: Any, kernel: str = "auto") -> Predictor:
    """``model`` itself if it is a :class:`Predictor` (with that ``kernel``, unless "auto"),
    else a predictor built from it."""
    if not isinstance(model, Predictor):
        return Predictor(model, kernel)
    if kernel not in ("auto", model.kernel):
        raise StoreError(
            f"the predictor given computes with {model.kernel!r} matmuls; the run was encoded "
            f"with {kernel!r}: build it as Predictor(model, kernel={kernel!r})"
        )
    return model

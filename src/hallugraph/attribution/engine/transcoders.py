"""A transcoder set in circuit-tracer's on-disk format, read without circuit-tracer.

A set is a folder with ``config.yaml`` (``model_kind: transcoder_set``, ``feature_input_hook``,
``feature_output_hook``, optional ``scan``) and one ``layer_{i}.safetensors`` per layer with
``W_enc [F, d]``, ``W_dec [F, d]``, ``b_enc [F]``, ``b_dec [d]``, optionally
``activation_function.threshold [F]`` (JumpReLU: ``z ↦ z·[z > θ]``, else ReLU) and
``W_skip [d, d]`` (skip transcoder: ``ŷ = a W_dec + b_dec + x W_skipᵀ``). Any trainer that
writes this format works (``hallugraph transcoders train``, circuit-tracer's ``to_safetensors``).

Hooks understood (Llama-family names, as circuit-tracer maps them): the features read
``mlp.hook_in`` / ``ln2.hook_normalized`` (the output of ``post_attention_layernorm``) or
``hook_resid_mid`` (its input), and write ``mlp.hook_out`` / ``hook_mlp_out`` (the MLP's output).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "INPUT_HOOKS",
    "OUTPUT_HOOKS",
    "EngineTranscoders",
    "TranscoderLayer",
    "load_transcoders",
]

#: input hook name -> whether the features read the normalized MLP input (else resid_mid)
INPUT_HOOKS = {"mlp.hook_in": True, "ln2.hook_normalized": True, "hook_resid_mid": False}
OUTPUT_HOOKS = ("mlp.hook_out", "hook_mlp_out")


@dataclass
class TranscoderLayer:
    """One layer's transcoder weights."""

    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None
    W_skip: torch.Tensor | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of ``x [..., d]`` (same operations as circuit-tracer)."""
        pre = F.linear(x.to(self.W_enc.dtype), self.W_enc, self.b_enc)
        if self.threshold is None:
            return F.relu(pre)
        return (pre * (pre > self.threshold)).to(pre)

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """``x W_skipᵀ`` (skip transcoders only)."""
        if self.W_skip is None:
            raise ValueError("this transcoder has no skip connection")
        return x @ self.W_skip.T


@dataclass
class EngineTranscoders:
    """A loaded transcoder set: one :class:`TranscoderLayer` per model layer."""

    layers: list[TranscoderLayer]
    input_hook: str
    output_hook: str
    scan: str | None
    path: Path | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_transcoder(self) -> int:
        return int(self.layers[0].W_enc.shape[0])

    @property
    def normalized_input(self) -> bool:
        """True when the features read the MLP input after ``post_attention_layernorm``."""
        return INPUT_HOOKS[self.input_hook]

    @property
    def skip_connection(self) -> bool:
        return self.layers[0].W_skip is not None


_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold", "W_skip"}


def load_transcoders(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> EngineTranscoders:
    """Read the transcoder set in ``path`` (see the module docstring); clear errors naming the
    file for anything missing or inconsistent."""
    import yaml
    from safetensors import safe_open

    root = Path(path).expanduser()
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{root} is not a transcoder set: {cfg_path.name} is missing")
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{cfg_path}: not valid YAML ({err})") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected a mapping")
    kind = cfg.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise ValueError(f"{cfg_path}: model_kind {kind!r} not supported (only transcoder_set)")
    in_hook = cfg.get("feature_input_hook")
    out_hook = cfg.get("feature_output_hook")
    if in_hook not in INPUT_HOOKS:
        raise ValueError(
            f"{cfg_path}: feature_input_hook {in_hook!r} not supported "
            f"(one of {', '.join(INPUT_HOOKS)})"
        )
    if out_hook not in OUTPUT_HOOKS:
        raise ValueError(
            f"{cfg_path}: feature_output_hook {out_hook!r} not supported "
            f"(one of {', '.join(OUTPUT_HOOKS)})"
        )
    files = {int(f.stem.split("_")[1]): f for f in root.glob("layer_*.safetensors")}
    if not files or sorted(files) != list(range(len(files))):
        raise ValueError(f"{root}: expected layer_0 … layer_N.safetensors, found {sorted(files)}")
    layers = []
    for i in range(len(files)):
        with safe_open(str(files[i]), framework="pt", device="cpu") as fh:
            keys = set(fh.keys())
            missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - keys
            if missing:
                raise ValueError(f"{files[i]}: missing tensors {sorted(missing)}")
            t = {k: fh.get_tensor(k).to(device=device, dtype=dtype) for k in keys & _KEYS}
        width, d = t["W_enc"].shape
        if t["W_dec"].shape != (width, d) or t["b_enc"].shape != (width,):
            raise ValueError(f"{files[i]}: W_enc {tuple(t['W_enc'].shape)}, W_dec / b_enc differ")
        layers.append(
            TranscoderLayer(
                W_enc=t["W_enc"],
                W_dec=t["W_dec"],
                b_enc=t["b_enc"],
                b_dec=t["b_dec"],
                threshold=t.get("activation_function.threshold"),
                W_skip=t.get("W_skip"),
            )
        )
    if len({tc.W_skip is None for tc in layers}) > 1:
        raise ValueError(f"{root}: W_skip present in some layers only")
    return EngineTranscoders(layers, in_hook, out_hook, cfg.get("scan", str(root)), root)

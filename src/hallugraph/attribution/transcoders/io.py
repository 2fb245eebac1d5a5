"""Transcoder sets on disk: circuit-tracer 0.5.0's ``transcoder_set`` format.

A set is a folder with ``config.yaml`` (``model_kind: transcoder_set``, hooks ``mlp.hook_in`` →
``mlp.hook_out``, ``scan``, ``transcoders``: the layer files) and one ``layer_{i}.safetensors``
per layer holding ``W_enc [F, d]``, ``b_enc [F]``, ``W_dec [F, d]``, ``b_dec [d]``, optionally
``activation_function.threshold [F]`` (JumpReLU; ReLU without it) and ``W_skip [d, d]`` (a skip
transcoder: circuit-tracer adds ``x @ W_skip.T`` to the reconstruction and treats it as a linear
path in attribution). ``manifest.json`` (ours) records how the set was made and its table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hallugraph.config import cache_dir
from hallugraph.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from hallugraph.models import model_slug

__all__ = [
    "MANIFEST",
    "default_set_dir",
    "load_set",
    "random_transcoder_set",
    "save_tensors",
    "write_manifest",
    "write_transcoder_set",
]

MANIFEST = "manifest.json"


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, str]
) -> None:
    """A safetensors file, written atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def write_transcoder_set(
    out: str | os.PathLike[str],
    layers: Sequence[dict[str, torch.Tensor]],
    scan: str | None = None,
) -> Path:
    """Write ``layer_{i}.safetensors`` + ``config.yaml`` (circuit-tracer's transcoder_set)."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, tensors in enumerate(layers):
        save_tensors(out / f"layer_{i}.safetensors", tensors, {})
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        "scan": scan or out.name,
    }
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return out


def random_transcoder_set(
    out: str | os.PathLike[str],
    n_layers: int,
    d_model: int,
    width: int,
    *,
    seed: int = 0,
    enc_scale: float = 0.3,
    dec_scale: float = 0.1,
    jumprelu_layers: Sequence[int] = (),
    threshold: float = 0.05,
    scan: str | None = None,
) -> Path:
    """Untrained transcoders (Gaussian ``W_enc``/``W_dec``, zero biases) in circuit-tracer's
    format, for tests and smoke-testing cost: the graphs they give are real-sized but mean
    nothing. Layers in ``jumprelu_layers`` get a JumpReLU ``threshold``."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(n_layers):
        t = {
            "W_enc": torch.randn(width, d_model, generator=g) * enc_scale,
            "W_dec": torch.randn(width, d_model, generator=g) * dec_scale,
            "b_enc": torch.zeros(width),
            "b_dec": torch.zeros(d_model),
        }
        if i in set(jumprelu_layers):
            t["activation_function.threshold"] = torch.full((width,), float(threshold))
        layers.append(t)
    return write_transcoder_set(out, layers, scan=scan)


def load_set(folder: str | os.PathLike[str]) -> list[dict[str, torch.Tensor]]:
    """The tensors of every ``layer_{i}.safetensors`` of a set, in layer order."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.yaml").exists():
        raise FileNotFoundError(f"{folder} is not a transcoder set (no config.yaml)")
    files = sorted(folder.glob("layer_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"{folder} has no layer_*.safetensors")
    out = []
    for i, f in enumerate(files):
        if f.stem != f"layer_{i}":
            raise ValueError(f"{folder}: layer files are not layer_0..layer_{len(files) - 1}")
        out.append(load_file(str(f)))
    return out


def default_set_dir(model: str, name: str) -> Path:
    """``~/.cache/hallugraph/transcoders/<model>/<name>``."""
    return cache_dir() / "transcoders" / model_slug(model) / name


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """``manifest.json`` next to the layer files."""
    return atomic_write_json(Path(folder) / MANIFEST, manifest)

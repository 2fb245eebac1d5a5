"""circuit-tracer glue: load a ReplacementModel (nnsight backend) with our transcoders and
attribute a token sequence.

Needs the optional extra ``attribution`` (circuit-tracer 0.5.0, nnsight 0.6.1,
transformer-lens < 4): ``pip install -e '.[attribution]'``.

BOS: circuit-tracer's ``ensure_tokenized`` prepends a special token when the sequence does not
start with one, but never picks id 0 (SmolLM2's ``<|endoftext|>``); and it zeroes the features
and the error at position 0. :func:`attribution_tokens` therefore makes the sequence start with
the tokenizer's BOS (the chat template's ``<|im_start|>`` already is one) before attributing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "attribute_tokens",
    "attribution_tokens",
    "load_replacement_model",
    "require_circuit_tracer",
]


def require_circuit_tracer() -> Any:
    """Import circuit_tracer or say how to install it."""
    try:
        import circuit_tracer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "attribution graphs need circuit-tracer: pip install -e '.[attribution]' "
            "(circuit-tracer==0.5.0, nnsight==0.6.1, transformer-lens<4)"
        ) from err
    return circuit_tracer


def load_replacement_model(
    model_dir: str | os.PathLike[str],
    transcoders_dir: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    lazy_decoder: bool = True,
) -> Any:
    """A circuit-tracer ``ReplacementModel`` (nnsight backend) of the HF checkpoint in
    ``model_dir`` with the transcoder set in ``transcoders_dir`` (``config.yaml`` +
    ``layer_{i}.safetensors``, e.g. written by ``hallugraph transcoders train``)."""
    require_circuit_tracer()
    from circuit_tracer import ReplacementModel
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    tdir = Path(transcoders_dir).expanduser().resolve()
    if not (tdir / "config.yaml").is_file():
        raise FileNotFoundError(f"no transcoder set in {tdir} (config.yaml missing)")
    dev = torch.device(device)
    transcoders, _ = load_transcoders_from_cache(
        tdir.name, cache_dir=tdir.parent, device=dev, dtype=dtype, lazy_decoder=lazy_decoder
    )
    return ReplacementModel.from_pretrained_and_transcoders(
        model_name=str(model_dir),
        transcoders=transcoders,
        backend="nnsight",
        device=dev,
        dtype=dtype,
    )


def attribution_tokens(tokenizer: Any, ids: Sequence[int]) -> tuple[torch.Tensor, int]:
    """``(tokens, shift)``: ``ids`` as a 1-D tensor starting with a special token (the
    tokenizer's BOS is prepended when needed; ``shift`` = 1 then, else 0)."""
    ids = [int(i) for i in ids]
    if ids and ids[0] in set(tokenizer.all_special_ids):
        return torch.tensor(ids, dtype=torch.long), 0
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("the tokenizer has no BOS token to start the attributed sequence with")
    return torch.tensor([bos, *ids], dtype=torch.long), 1


def attribute_tokens(
    replacement_model: Any,
    tokens: torch.Tensor,
    *,
    max_feature_nodes: int | None = 256,
    batch_size: int = 64,
    attribution_targets: Any = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    verbose: bool = False,
) -> Any:
    """``circuit_tracer.attribute`` on a token tensor that already starts with its BOS."""
    require_circuit_tracer()
    from circuit_tracer import attribute

    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    special = set(replacement_model.tokenizer.all_special_ids)
    if int(tokens[0]) not in special:
        raise ValueError(
            "the tokens must start with a special token (BOS); use attribution_tokens() first"
        )
    return attribute(
        tokens,
        replacement_model,
        attribution_targets=attribution_targets,
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        batch_size=batch_size,
        max_feature_nodes=max_feature_nodes,
        verbose=verbose,
    )

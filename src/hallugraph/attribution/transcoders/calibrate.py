"""Calibrate a set's exported JumpReLU thresholds to a target L0, without retraining.

BatchTopK keeps ``k`` features per token *on average over a training batch*, and the exported
threshold is the running mean of the batches' thresholds: on text whose pre-activations run
larger than the training mix's (SmolLM2-135M's HaluEval-QA contexts) more features pass it
(the v2 set: k = 48 in training, L0 69.6 on held-out HaluEval-QA, 32.8 on TriviaQA). Here,
per layer, the threshold is raised to the smallest value at which the mean L0 on
HaluEval-QA-format *training-side* text (:func:`~.corpus.calibration_texts`, never the held-out
text) is at most ``target_l0``; a threshold is never lowered (features are never switched on
where training never had them). Runs the float32 model, as ``transcoders eval`` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hallugraph.attribution.transcoders.io import (
    MANIFEST,
    load_set,
    write_manifest,
    write_transcoder_set,
)

__all__ = ["activation_tails", "calibrate_set", "threshold_for_l0"]

THRESHOLD = "activation_function.threshold"


@torch.no_grad()
def activation_tails(
    lm: Any,
    layers: Sequence[Mapping[str, torch.Tensor]],
    texts: Sequence[str],
    *,
    batch_texts: int = 8,
    max_len: int = 1024,
    progress: bool = True,
) -> tuple[list[torch.Tensor], int]:
    """Per layer, every pre-activation ``x W_encᵀ + b_enc`` above its feature's threshold
    (the entries that are active now; float32, flattened), and the number of tokens (all but
    position 0 and padding, as everywhere)."""
    from tqdm.auto import tqdm

    from hallugraph.attribution.transcoders.train import capture

    pad = lm.tokenizer.pad_token_id or 0
    dtype = next(lm.model.parameters()).dtype
    enc = [(t["W_enc"].to(dtype), t["b_enc"].to(dtype), t.get(THRESHOLD)) for t in layers]
    tails: list[list[torch.Tensor]] = [[] for _ in layers]
    n = 0
    add = not lm.use_chat_template
    for b in tqdm(range(0, len(texts), batch_texts), desc="calibrate", disable=not progress):
        ids = lm.tokenizer(list(texts[b : b + batch_texts]), add_special_tokens=add)["input_ids"]
        ins, _ = capture(lm.model, [np.asarray(s[:max_len]) for s in ids], pad)
        n += int(ins[0].shape[0])
        for i, (w, bias, th) in enumerate(enc):
            z = F.linear(ins[i].to(dtype), w, bias)
            tails[i].append(z[z > (th.to(dtype) if th is not None else 0)].float())
            ins[i] = None  # free as we go
    return [torch.cat(t) for t in tails], n


def threshold_for_l0(values: torch.Tensor, n_tokens: int, target_l0: float) -> float | None:
    """The smallest threshold ``θ`` with ``#(values > θ) / n_tokens ≤ target_l0``, or None
    when the values already meet it."""
    allowed = int(target_l0 * n_tokens)
    if values.numel() <= allowed:
        return None
    # the (allowed + 1)-th largest value: strictly above it are at most `allowed` entries
    return float(torch.kthvalue(values, values.numel() - allowed).values)


def calibrate_set(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    target_l0: float,
    model: str = "smollm2_135M",
    tokens: int = 20_000,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    lm: Any = None,
    texts: Sequence[str] | None = None,
    tails: tuple[list[torch.Tensor], int] | None = None,
) -> dict[str, Any]:
    """Write ``dst``: the set ``src`` with thresholds raised to ``target_l0`` (``dst`` may be
    ``src``). Copies ``skip.safetensors`` and the manifest (its ``eval`` dropped: it described
    other thresholds) and adds ``calibration`` to it. Returns that entry. ``tails``: the
    :func:`activation_tails` of ``src`` on ``texts``, computed once to try several targets."""
    from hallugraph.attribution.transcoders.corpus import calibration_texts
    from hallugraph.io import atomic_write_bytes, jsonable
    from hallugraph.models import load_model

    if target_l0 <= 0:
        raise ValueError(f"target L0 must be > 0, not {target_l0}")
    src, dst = Path(src), Path(dst)
    layers = load_set(src)
    if tails is None or texts is None:
        lm = lm or load_model(model, dtype="float32", device="cpu")
        texts = list(texts) if texts is not None else calibration_texts(lm, data_dir, tokens)
        tails = activation_tails(lm, layers, texts, progress=progress)
    values, n = tails
    rows = []
    out = []
    for i, (t, v) in enumerate(zip(layers, values, strict=True)):
        old = t.get(THRESHOLD)
        width = int(t["W_enc"].shape[0])
        old = old.float() if old is not None else torch.zeros(width)
        theta = threshold_for_l0(v, n, target_l0)
        new = old if theta is None else torch.clamp(old, min=theta)
        out.append({**t, THRESHOLD: new.contiguous()})
        rows.append(
            {
                "layer": i,
                "threshold_before": float(old.mean()),
                "threshold": float(new.mean()),
                "l0_before": v.numel() / max(n, 1),
                "l0": float((v > (theta or 0.0)).sum() if theta is not None else v.numel()) / n,
            }
        )
    cfg = (src / "config.yaml").read_text()
    scan = next(
        (ln.split(":", 1)[1].strip() for ln in cfg.splitlines() if ln.startswith("scan:")), None
    )
    write_transcoder_set(dst, out, scan=f"{scan}-l0{target_l0:g}" if scan and dst != src else scan)
    if src != dst and (src / "skip.safetensors").exists():
        atomic_write_bytes(dst / "skip.safetensors", (src / "skip.safetensors").read_bytes())
    entry = {
        "source": str(src),
        "target_l0": target_l0,
        "tokens": n,
        "texts": len(texts),
        "text": "HaluEval-QA training side (context + question + answer)",
        "l0_before_mean": float(np.mean([r["l0_before"] for r in rows])),
        "l0_mean": float(np.mean([r["l0"] for r in rows])),
        "layers": rows,
    }
    manifest: dict[str, Any] = {}
    if (src / MANIFEST).exists():
        import json

        manifest = json.loads((src / MANIFEST).read_text())
        manifest.pop("eval", None)
    manifest.update({"name": dst.name, "calibration": entry})
    write_manifest(dst, jsonable(manifest))
    return entry

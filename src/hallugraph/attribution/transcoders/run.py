"""``hallugraph transcoders train`` / ``eval``: train, export, evaluate, write the manifest."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hallugraph.attribution.transcoders.corpus import EVAL_TOKENS, build_corpus, eval_texts
from hallugraph.attribution.transcoders.evaluate import evaluate_set, format_table, summary
from hallugraph.attribution.transcoders.io import (
    MANIFEST,
    load_set,
    save_tensors,
    write_manifest,
    write_transcoder_set,
)
from hallugraph.attribution.transcoders.train import TrainConfig, train
from hallugraph.config import cpu_name
from hallugraph.models import model_slug

__all__ = ["SKIP_FILE", "eval_set", "git_commit", "train_set"]

SKIP_FILE = "skip.safetensors"


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (``+dirty`` with local changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=here.parents[2],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def _skip_bias(folder: Path, n_layers: int) -> list[torch.Tensor] | None:
    from safetensors.torch import load_file

    if not (folder / SKIP_FILE).exists():
        return None
    t = load_file(str(folder / SKIP_FILE))
    return [t[f"b_skip.{i}"] for i in range(n_layers)]


def eval_set(
    folder: str | os.PathLike[str],
    model: str = "smollm2_135M",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    max_texts: int | None = None,
    tokens: int | None = EVAL_TOKENS,
    progress: bool = True,
    lm: Any = None,
) -> dict[str, Any]:
    """Evaluate a set on the held-out texts (float32 model; ``max_texts`` texts and ``tokens``
    tokens per held-out set at most): per set, the per-layer rows and their summary."""
    from hallugraph.models import load_model

    folder = Path(folder)
    layers = load_set(folder)
    lm = lm or load_model(model, dtype="float32", device="cpu")
    texts = eval_texts(lm, data_dir, max_texts, max_tokens=tokens)
    tables = evaluate_set(
        lm, layers, texts, skip_bias=_skip_bias(folder, len(layers)), progress=progress
    )
    return {"tables": tables, "summary": {k: summary(v) for k, v in tables.items()}}


def train_set(
    out: str | os.PathLike[str],
    cfg: TrainConfig,
    *,
    model: str = "smollm2_135M",
    tokens: int,
    time_budget: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    evaluate: bool = True,
    eval_max_texts: int | None = None,
    eval_tokens: int | None = EVAL_TOKENS,
    progress: bool = True,
    preset: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) into ``out``; export the set, evaluate it, write ``manifest.json``.
    Returns the manifest (``"exported": False`` while the skip phase is unfinished)."""
    from hallugraph.models import load_model

    out = Path(out)
    t_start = time.monotonic()
    commit = git_commit()  # the code this run uses (edits made while it runs do not count)
    lm = load_model(model, dtype="bfloat16", device="cpu", attn_implementation="sdpa")
    corpus = build_corpus(lm, window=cfg.window, sources=cfg.sources, data_dir=data_dir)
    log(
        f"corpus: {corpus.info.get('tokens')} tokens; training {lm.num_layers} skip "
        f"transcoders of {cfg.width} features (k={cfg.k}) into {out}"
    )
    tcs, st, stopped = train(
        lm, corpus, out, cfg, tokens=tokens, time_budget=time_budget, progress=progress, log=log
    )
    manifest: dict[str, Any] = {
        "model": model,
        "model_source": lm.source,
        "name": out.name,
        "preset": preset,
        "config": cfg.to_dict(),
        "token_budget": tokens,
        "time_budget": time_budget,
        "stopped": stopped,
        "phase": st.phase,
        "skip_tokens": st.skip_n,
        "skip_ridges": st.ridges,
        "tokens": st.tokens,
        "steps": st.step,
        "seconds": round(st.seconds, 1),
        "tokens_per_s": round(st.tokens / st.seconds, 1) if st.seconds else None,
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "corpus": corpus.info,
        "exported": False,
        "history": st.history[:: max(1, len(st.history) // 200)],
    }
    del lm
    if st.phase != "sparse" or st.step == 0:
        write_manifest(out, manifest)
        return manifest
    exported = [tc.export() for tc in tcs]
    write_transcoder_set(out, exported, scan=f"hallugraph/{model_slug(model)}/{out.name}")
    save_tensors(
        out / SKIP_FILE, {f"b_skip.{i}": tc.b_skip.float() for i, tc in enumerate(tcs)}, {}
    )
    manifest["exported"] = True
    if cfg.export_l0 > 0:
        from hallugraph.attribution.transcoders.calibrate import calibrate_set

        write_manifest(out, manifest)
        manifest["calibration"] = calibrate_set(
            out, out, target_l0=cfg.export_l0, model=model, data_dir=data_dir, progress=progress
        )
        log(
            f"thresholds calibrated: L0 {manifest['calibration']['l0_before_mean']:.1f} -> "
            f"{manifest['calibration']['l0_mean']:.1f} on training-side HaluEval-QA text"
        )
    if evaluate:
        result = eval_set(
            out,
            model,
            data_dir=data_dir,
            max_texts=eval_max_texts,
            tokens=eval_tokens,
            progress=progress,
        )
        manifest["eval"] = result
        log(format_table(result["tables"]))
    manifest["wall_seconds"] = round(time.monotonic() - t_start, 1)
    write_manifest(out, manifest)
    log(f"wrote {out / MANIFEST}")
    return manifest

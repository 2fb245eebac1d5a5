"""Train a set of per-layer skip transcoders from one model forward per batch.

Phases (resumable at any checkpoint):

1. ``skip``: forward passes over the first ``skip_tokens`` training tokens (of the prompt pool
   only with ``skip_pool="prompts"``) accumulate, per layer, the float64 normal equations of
   ``y ≈ x W_skipᵀ + b`` (:class:`~.model.SkipFit`);
   they are solved once, with the ridge that predicts held-out batches best
   (:func:`~.model.fit_skip`).
2. ``sparse``: each batch goes once through the model (bfloat16, sdpa attention), the MLP
   input ``x`` and output ``y`` of every layer are captured (position 0 and padding left out:
   position 0 carries the model's attention-sink activation, MLP output norm ~25,000 at
   layer 11 against ~30 elsewhere, and circuit-tracer zeroes its features anyway),
   and each layer's :class:`~.model.SkipTranscoder` takes one Adam step on ``r = y − skip(x)``.

A checkpoint (:mod:`.checkpoint`) holds the weights, Adam's state, the dead-feature counters and the
data cursor; running again into the same folder continues from it, and a run cut at a
checkpoint and resumed gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hallugraph.attribution.transcoders.checkpoint import (
    load_checkpoint,
    sample_prototypes,
    save_checkpoint,
)
from hallugraph.attribution.transcoders.config import PRESETS, TrainConfig, TrainState
from hallugraph.attribution.transcoders.corpus import BatchPlan, Corpus
from hallugraph.attribution.transcoders.model import SkipFit, SkipTranscoder, fit_skip
from hallugraph.models import LoadedModel

__all__ = ["PRESETS", "TrainConfig", "TrainState", "capture", "train"]


def padded_batch(
    ids: list[np.ndarray], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(batch, mask, keep)``: the sequences right-padded with ``pad`` into one batch, its
    attention mask, and the positions captured (not padding, not position 0)."""
    n = max(len(s) for s in ids)
    batch = torch.full((len(ids), n), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, s in enumerate(ids):
        batch[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, : len(s)] = 1
    keep = mask.bool()
    keep[:, 0] = False
    return batch, mask, keep


def capture(
    model: Any, ids: list[np.ndarray], pad: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """MLP inputs and outputs ``[n_tokens, d]`` (float32) of every layer, all non-padding
    positions but position 0, from one forward of the base model (no LM head)."""
    batch, mask, keep = padded_batch(ids, pad)
    ins: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    handles = []
    for layer in model.model.layers:
        norm, mlp = layer.post_attention_layernorm, layer.mlp
        handles.append(norm.register_forward_hook(lambda m, a, o: ins.append(o[keep].float())))
        handles.append(mlp.register_forward_hook(lambda m, a, o: outs.append(o[keep].float())))
    try:
        with torch.no_grad():
            model.model(input_ids=batch, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ins, outs


def _new_layers(cfg: TrainConfig, d: int, n_layers: int) -> list[SkipTranscoder]:
    return [SkipTranscoder(d, cfg.width, cfg.k, seed=cfg.seed * 1000 + i) for i in range(n_layers)]


def _optimizers(tcs: list[SkipTranscoder], lr: float) -> list[torch.optim.Adam]:
    return [torch.optim.Adam(tc.parameters(), lr=lr, fused=True) for tc in tcs]


def _batch(corpus: Corpus, plan: BatchPlan, i: int) -> list[np.ndarray]:
    return [corpus.seq(int(j)) for j in plan.batch(i)]


def train(
    lm: LoadedModel,
    corpus: Corpus,
    out: str | os.PathLike[str],
    cfg: TrainConfig,
    *,
    tokens: int,
    time_budget: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[list[SkipTranscoder], TrainState, str]:
    """Train (or continue) into ``out`` until ``tokens`` sparse-phase tokens in total or
    ``time_budget`` seconds of this call; returns the layers, the state and why it stopped
    (``"tokens"`` or ``"time"``). ``lm`` is the model the activations come from (bfloat16 is
    what the presets use)."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d, n_layers = int(lm.model.config.hidden_size), int(lm.model.config.num_hidden_layers)
    tcs = _new_layers(cfg, d, n_layers)
    opts = _optimizers(tcs, cfg.lr)
    # normal equations per layer: fits[i] training batches, fits[n_layers + i] validation
    # batches (every 7th: both pools) that choose the ridge
    fits = [SkipFit(d, d) for _ in range(2 * n_layers)]
    # prototype tokens for the data initialization, sampled through the skip phase
    pool: list[list[torch.Tensor]] = [[], []]
    resume = (out / "checkpoint" / "state.json").exists()
    st = load_checkpoint(out, cfg, tcs, opts, fits, pool) if resume else None
    st = st or TrainState()
    plan = BatchPlan(corpus, cfg.batch_tokens, cfg.prompt_share, cfg.seed)
    pad = lm.tokenizer.pad_token_id or 0
    start = time.monotonic()
    stopped = "tokens"
    since = 0

    def out_of_time() -> bool:
        return time_budget is not None and time.monotonic() - start >= time_budget

    if st.phase == "skip":
        bar = tqdm(
            total=cfg.skip_tokens,
            initial=st.skip_n,
            unit="tok",
            unit_scale=True,
            desc="skip (least squares)",
            disable=not progress,
            dynamic_ncols=True,
        )
        only_prompts = cfg.skip_pool == "prompts" and len(plan.pools[0]) > 0
        while st.skip_n < cfg.skip_tokens and not out_of_time():
            if only_prompts and corpus.pool[int(plan.batch(st.batch)[0])] != 0:
                st.batch += 1  # a general-text batch: not used for the skip
                continue
            t0 = time.monotonic()
            ins, outs = capture(lm.model, _batch(corpus, plan, st.batch), pad)
            val = n_layers if st.batch % 7 == 3 else 0
            for i in range(n_layers):
                fits[val + i].update(ins[i], outs[i])
            sample_prototypes(pool, ins, outs, cfg, st.batch)
            st.batch += 1
            st.skip_n = fits[0].n + fits[n_layers].n
            st.seconds += time.monotonic() - t0
            bar.update(int(ins[0].shape[0]))
            since += 1
            if since >= cfg.checkpoint_every:
                save_checkpoint(out, cfg, st, tcs, opts, fits, pool)
                since = 0
        bar.close()
        if st.skip_n < cfg.skip_tokens:
            save_checkpoint(out, cfg, st, tcs, opts, fits, pool)
            return tcs, st, "time"
        gen = torch.Generator()
        for i in range(n_layers):
            w, b, st.ridges[str(i)] = fit_skip(fits[i], fits[n_layers + i])
            tcs[i].set_skip(w, b)
            x, y = pool[0][i], pool[1][i]
            r = y - tcs[i].skip(x)
            tcs[i].init_scales(x, r)
            gen.manual_seed(cfg.seed * 7919 + i)
            tcs[i].init_from_data(x, r, gen, cfg.enc_init)
        st.phase = "sparse"
        save_checkpoint(out, cfg, st, tcs, opts, None)
        since = 0
    gen = torch.Generator()
    bar = tqdm(
        total=tokens,
        initial=min(st.tokens, tokens),
        unit="tok",
        unit_scale=True,
        desc="transcoders",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        while st.tokens < tokens:
            if out_of_time():
                stopped = "time"
                break
            t0 = time.monotonic()
            ins, outs = capture(lm.model, _batch(corpus, plan, st.batch), pad)
            n = int(ins[0].shape[0])
            progress = st.tokens / tokens
            if time_budget:
                progress = max(progress, (time.monotonic() - start) / time_budget)
            lr = cfg.lr_at(st.step, progress)
            fvu, l0, dead = [], [], []
            resampled = 0
            for i, (tc, opt) in enumerate(zip(tcs, opts, strict=True)):
                x, y = ins[i], outs[i]
                r = y - tc.skip(x)
                gen.manual_seed(cfg.seed * 1_000_003 + st.step * 101 + i)
                s = tc.train_step(
                    x,
                    r,
                    gen=gen,
                    tokens_seen=st.tokens,
                    dead_tokens=cfg.dead_tokens,
                    k_aux=cfg.k_aux,
                    aux_coef=cfg.aux_coef,
                )
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.step()
                tc.after_step()
                if cfg.resample_every and (st.step + 1) % cfg.resample_every == 0:
                    resampled += tc.resample_dead(
                        x,
                        r,
                        tokens_seen=st.tokens + n,
                        dead_tokens=cfg.dead_tokens,
                        gen=gen,
                        opt=opt,
                        init=cfg.resample_init,
                    )
                var_y = float((y.double() - y.double().mean(0)).pow(2).sum())
                fvu.append(s["sse"] * float(tc.res_scale) ** 2 / max(var_y, 1e-12))
                l0.append(s["l0"])
                dead.append(s["dead"])
                ins[i] = outs[i] = None  # free as we go
            st.step += 1
            st.batch += 1
            st.tokens += n
            st.seconds += time.monotonic() - t0
            rec = {
                "step": st.step,
                "tokens": st.tokens,
                "seconds": round(st.seconds, 1),
                "fvu": float(np.mean(fvu)),
                "fvu_max": float(np.max(fvu)),
                "l0": float(np.mean(l0)),
                "dead": float(np.mean(dead)),
                "resampled": resampled,
                "lr": lr,
            }
            st.history.append(rec)
            bar.update(min(n, max(tokens - bar.n, 0)))
            bar.set_postfix(
                fvu=f"{rec['fvu']:.3f}",
                max=f"{rec['fvu_max']:.2f}",
                l0=f"{rec['l0']:.0f}",
                dead=f"{rec['dead']:.1%}",
                refresh=False,
            )
            if log is not None and st.step % 25 == 0:
                log(json.dumps(rec))
            since += 1
            if since >= cfg.checkpoint_every:
                save_checkpoint(out, cfg, st, tcs, opts, None)
                since = 0
    finally:
        bar.close()
        if since:
            save_checkpoint(out, cfg, st, tcs, opts, None)
    if not math.isfinite(st.history[-1]["fvu"] if st.history else 0.0):
        raise FloatingPointError("training diverged (FVU is not finite); lower --lr")
    return tcs, st, stopped

"""Transcoder training speed: the old trainer against the new one, same width, same text, one
process.

Old (:mod:`hallugraph.attribution.transcoders.legacy`): float32 eager forward of the whole
causal LM, then per layer a dense ReLU transcoder (L1), autograd, Adam. New
(:mod:`hallugraph.attribution.transcoders.train`): bfloat16 sdpa forward of the base model,
then per layer the BatchTopK skip transcoder step (bfloat16 encoder product, sparse decoder and
gradients, Adam on float32 masters). Both train all layers of SmolLM2-135M at ``--width``
features on the same batches (``--steps`` timed steps each after one untimed warm-up step).

    python benchmarks/transcoder_speed.py --threads 2 --steps 3

The last line is ``tokens_per_s_old=<a> tokens_per_s_new=<b> ratio=<b/a>``.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from hallugraph.attribution.transcoders.corpus import BatchPlan, build_corpus
from hallugraph.attribution.transcoders.legacy import LegacyTranscoder, legacy_step
from hallugraph.attribution.transcoders.model import SkipFit, SkipTranscoder
from hallugraph.attribution.transcoders.train import capture
from hallugraph.config import cpu_name
from hallugraph.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2_135M")
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per trainer")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    amx = "amx_bf16" in flags
    print(f"CPU: {cpu_name()} (AMX-BF16: {'yes' if amx else 'no'}), torch threads {args.threads}")

    lm16 = load_model(args.model, dtype="bfloat16", device="cpu", attn_implementation="sdpa")
    corpus = build_corpus(lm16)
    plan = BatchPlan(corpus, args.batch_tokens, prompt_share=0.0, seed=0)
    batches = [[corpus.seq(int(j)) for j in plan.batch(i)] for i in range(args.steps + 1)]
    pad = lm16.tokenizer.pad_token_id or 0
    d, n_layers = lm16.model.config.hidden_size, lm16.model.config.num_hidden_layers

    # --- new: skip fitted on the warm-up batch (cost not counted), then timed sparse steps
    tcs = [SkipTranscoder(d, args.width, args.k, seed=i) for i in range(n_layers)]
    opts = [torch.optim.Adam(tc.parameters(), lr=1e-3, fused=True) for tc in tcs]
    ins, outs = capture(lm16.model, batches[0], pad)
    gen = torch.Generator().manual_seed(0)
    for i, tc in enumerate(tcs):
        fit = SkipFit(d, d)
        fit.update(ins[i], outs[i])
        tc.set_skip(*fit.solve(1e-3))
        r = outs[i] - tc.skip(ins[i])
        tc.init_scales(ins[i], r)
        tc.init_from_data(ins[i], r, gen)
    new_tokens, t0 = 0, 0.0
    for s, batch in enumerate(batches):
        if s == 1:
            t0 = time.perf_counter()
        ins, outs = capture(lm16.model, batch, pad)
        for i, (tc, opt) in enumerate(zip(tcs, opts, strict=True)):
            x, y = ins[i], outs[i]
            tc.train_step(
                x,
                y - tc.skip(x),
                gen=gen,
                tokens_seen=new_tokens,
                dead_tokens=10**6,
                k_aux=256,
                aux_coef=1 / 32,
            )
            opt.step()
            tc.after_step()
        if s >= 1:
            new_tokens += int(ins[0].shape[0])
    new_s = time.perf_counter() - t0
    del tcs, opts, lm16, ins, outs
    gc.collect()
    print(f"new: {new_tokens} tokens in {new_s:.1f} s ({args.steps} steps)", flush=True)

    # --- old: float32 eager model, dense ReLU transcoders
    lm32 = load_model(args.model, dtype="float32", device="cpu")
    torch.manual_seed(0)
    old = [LegacyTranscoder(d, args.width) for _ in range(n_layers)]
    old_opts = [torch.optim.Adam(tc.parameters(), lr=1e-3) for tc in old]
    old_tokens, t0 = 0, 0.0
    for s, batch in enumerate(batches):
        if s == 1:
            t0 = time.perf_counter()
        n = legacy_step(lm32.model, old, old_opts, batch, pad, first=s == 0)
        if s >= 1:
            old_tokens += n
    old_s = time.perf_counter() - t0
    print(f"old: {old_tokens} tokens in {old_s:.1f} s ({args.steps} steps)", flush=True)
    a, b = old_tokens / old_s, new_tokens / new_s
    print(f"tokens_per_s_old={a:.1f} tokens_per_s_new={b:.1f} ratio={b / a:.2f}")


if __name__ == "__main__":
    main()

"""Which text should the closed-form skip be fitted on? Held-out FVU of the skip alone.

Fits, per layer of SmolLM2-135M, the least-squares skip ``y ≈ x W_skipᵀ + b`` (float64 normal
equations, :class:`~hallugraph.attribution.transcoders.model.SkipFit`) on training batches of
the transcoder corpus — the prompt pool (chat-formatted TriviaQA / HaluEval-QA training
prompts + answers), the general pool (Python docs, GCIDE), both, both with the prompt pool
weighted ×3, and (``--prefix``) the general windows with ``<|im_start|>`` put in front, so
that every sequence starts with the token the prompts start with — and measures the FVU of
each skip on the held-out texts of ``hallugraph transcoders eval`` (float32 model) and on two
held-out general batches. Position 0 is left out everywhere (as in training).

    python benchmarks/transcoder_skip_text.py --threads 1 --prefix
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hallugraph.attribution.transcoders.corpus import BatchPlan, build_corpus, eval_texts
from hallugraph.attribution.transcoders.model import SkipFit
from hallugraph.attribution.transcoders.train import capture
from hallugraph.config import cpu_name
from hallugraph.models import load_model

RIDGES = (1e-6, 1e-3, 1e-2, 0.1, 1.0)


def _var(f: SkipFit) -> float:
    s = f.xty[-1]  # Σy (the ones column)
    return float(f.yy - s.pow(2).sum() / f.n)


def _scaled(f: SkipFit, a: float) -> SkipFit:
    out = SkipFit(f.xtx.shape[0] - 1, f.xty.shape[1])
    out.xtx, out.xty, out.yy, out.n = f.xtx * a, f.xty * a, f.yy * a, f.n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2_135M")
    ap.add_argument("--prompt-batches", type=int, default=12)
    ap.add_argument("--general-batches", type=int, default=12)
    ap.add_argument("--eval-texts", type=int, default=40, help="per held-out set")
    ap.add_argument("--prefix", action="store_true", help="also the <|im_start|>-prefixed fit")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype="bfloat16", device="cpu", attn_implementation="sdpa")
    tok = lm.tokenizer
    pad = tok.pad_token_id or 0
    d, n_layers = int(lm.model.config.hidden_size), lm.num_layers
    corpus = build_corpus(lm, window=256)
    plan = BatchPlan(corpus, 2048, 0.3, 0)
    keys = ["p", "g", "gval"] + (["gpre"] if args.prefix else [])
    fits = {k: [SkipFit(d, d) for _ in range(n_layers)] for k in keys}
    first = tok.convert_tokens_to_ids("<|im_start|>")
    n_p = n_g = 0
    i = 0
    while n_p < args.prompt_batches or n_g < args.general_batches + 2:
        idx = plan.batch(i)
        i += 1
        prompt = corpus.pool[int(idx[0])] == 0
        if (prompt and n_p >= args.prompt_batches) or (
            not prompt and n_g >= args.general_batches + 2
        ):
            continue
        seqs = [corpus.seq(int(j)) for j in idx]
        ins, outs = capture(lm.model, seqs, pad)
        key = "p" if prompt else ("gval" if n_g >= args.general_batches else "g")
        for layer in range(n_layers):
            fits[key][layer].update(ins[layer], outs[layer])
        if key == "g" and args.prefix:
            ins, outs = capture(lm.model, [np.concatenate([[first], s[:-1]]) for s in seqs], pad)
            for layer in range(n_layers):
                fits["gpre"][layer].update(ins[layer], outs[layer])
        n_p, n_g = n_p + prompt, n_g + (not prompt)
    print("training tokens:", {k: v[0].n for k, v in fits.items()}, flush=True)
    del lm
    lm = load_model(args.model, dtype="float32", device="cpu")
    texts = eval_texts(lm, None, args.eval_texts)
    held = [SkipFit(d, d, torch.float64) for _ in range(n_layers)]
    xs, ys = [], []  # layer 11, for the outlier check
    for group in texts.values():
        enc = tok(list(group), add_special_tokens=not lm.use_chat_template)["input_ids"]
        for b in range(0, len(enc), 10):
            ins, outs = capture(lm.model, [np.asarray(s) for s in enc[b : b + 10]], pad)
            for layer in range(n_layers):
                held[layer].update(ins[layer], outs[layer])
            xs.append(ins[11].double())
            ys.append(outs[11].double())
    # position 0 (left out above): the attention sink's MLP output at layer 11
    first_ids = torch.as_tensor(
        tok(list(texts.values())[0][0], add_special_tokens=not lm.use_chat_template)["input_ids"]
    )[None]
    seen: list[torch.Tensor] = []
    hook = lm.model.model.layers[11].mlp.register_forward_hook(lambda m, a, o: seen.append(o[0]))
    with torch.no_grad():
        lm.model.model(input_ids=first_ids, use_cache=False)
    hook.remove()
    norms = seen[0].norm(dim=-1)
    print(
        f"layer 11 MLP output norm, first held-out text: position 0 {float(norms[0]):.0f}, "
        f"positions 1.. median {float(norms[1:].median()):.1f}, max {float(norms[1:].max()):.1f}"
    )
    print(f"held-out tokens: {held[0].n} ({', '.join(texts)}); CPU: {cpu_name()}")
    variants = {
        "general only": lambda L: fits["g"][L],
        "both pools": lambda L: fits["p"][L].merged(fits["g"][L]),
        "both, prompts x3": lambda L: _scaled(fits["p"][L], 3.0).merged(fits["g"][L]),
        "prompts only": lambda L: fits["p"][L],
    }
    if args.prefix:
        variants["general, <|im_start|> first"] = lambda L: fits["gpre"][L]
    # layer 11, skip of both pools: is the error a few outlier tokens?
    x, y = torch.cat(xs), torch.cat(ys)
    w, b = fits["p"][11].merged(fits["g"][11]).solve(1e-6)
    err = (x @ w.T + b - y).pow(2).sum(1)
    top = max(1, len(err) // 100)
    keep = torch.ones(len(err), dtype=torch.bool)
    keep[torch.argsort(y.norm(dim=1), descending=True)[:top]] = False
    yk = y[keep]
    print(
        f"layer 11, skip of both pools (ridge 1e-6) on held-out prompts: FVU "
        f"{float(err.sum() / (y - y.mean(0)).pow(2).sum()):.2f}; the 1 % of tokens with the "
        f"largest error hold {float(err.sort(descending=True).values[:top].sum() / err.sum()):.1%}"
        f" of it; without the 1 % of largest |y|: FVU "
        f"{float(err[keep].sum() / (yk - yk.mean(0)).pow(2).sum()):.2f}; |y| median "
        f"{float(y.norm(dim=1).median()):.1f}, max {float(y.norm(dim=1).max()):.1f}"
    )
    print(
        "| skip fitted on | ridge | held-out prompts: mean FVU | max (layer) | layer 11 "
        "| held-out general: mean FVU | layer 11 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, get in variants.items():
        for r in RIDGES:
            ev, gv = [], []
            for layer in range(n_layers):
                w, b = get(layer).solve(r)
                ev.append(held[layer].sse(w, b) / _var(held[layer]))
                gval = fits["gval"][layer]
                gv.append(gval.sse(w, b) / _var(gval))
            print(
                f"| {name} | {r:g} | {np.mean(ev):.3f} | {max(ev):.2f} ({int(np.argmax(ev))}) "
                f"| {ev[11]:.3f} | {np.mean(gv):.3f} | {gv[11]:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

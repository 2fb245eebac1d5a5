"""Dead features and L0 of the skip transcoders: short runs on a few layers, cached activations.

``capture``: one bfloat16 forward (as in training) over the first ``--train-tokens`` tokens of
a preset's training plan and over the held-out texts of ``transcoders eval``, keeping the MLP
inputs / outputs of ``--layers`` (position 0 and padding left out) in ``runs/transcoder_dead``.
``run``: per variant of the resampling, trains those layers' sparse part on the cached tokens
(same batches for every variant; the skip from ``--skip-from``'s checkpoint), exports it and
measures FVU, L0 and the share never active on the cached held-out tokens.
``thresholds``: FVU against L0 of a set's layers when its thresholds are raised (with and
without ``b_dec`` re-centred). ``curve``: a set's share not yet active after N held-out tokens.

    python benchmarks/transcoder_dead.py capture --layers 4,10,16 --train-tokens 100000
    python benchmarks/transcoder_dead.py run --variants v2,fixed,none --dead-tokens 20000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hallugraph.attribution.transcoders.config import PRESETS
from hallugraph.attribution.transcoders.model import SkipTranscoder, exported_forward
from hallugraph.attribution.transcoders.train import padded_batch
from hallugraph.config import cpu_name

CACHE = Path("runs/transcoder_dead")


class _Stop(Exception):
    pass


def _capture(model, ids: list[np.ndarray], pad: int, layers: list[int]):
    batch, mask, keep = padded_batch(ids, pad)
    got: dict[str, torch.Tensor] = {}
    handles = []
    last = max(layers)

    def hook(key: str, stop: bool):
        def f(m, a, o):
            got[key] = o[keep].to(torch.bfloat16)
            if stop:
                raise _Stop

        return f

    for i in layers:
        layer = model.model.layers[i]
        handles.append(layer.post_attention_layernorm.register_forward_hook(hook(f"x{i}", False)))
        handles.append(layer.mlp.register_forward_hook(hook(f"y{i}", i == last)))
    try:
        with torch.no_grad():
            model.model(input_ids=batch, attention_mask=mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


def capture(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from hallugraph.attribution.transcoders.corpus import BatchPlan, build_corpus, eval_texts
    from hallugraph.models import load_model

    layers = [int(v) for v in args.layers.split(",")]
    cfg = PRESETS[args.preset][0]
    lm = load_model("smollm2_135M", dtype="bfloat16", device="cpu", attn_implementation="sdpa")
    pad = lm.tokenizer.pad_token_id or 0
    corpus = build_corpus(lm, window=cfg.window, sources=cfg.sources)
    plan = BatchPlan(corpus, cfg.batch_tokens, cfg.prompt_share, cfg.seed)
    add = not lm.use_chat_template
    held = eval_texts(lm, None, None, max_tokens=args.eval_tokens)
    jobs: dict[str, list[list[np.ndarray]]] = {"train": []}
    n, b = 0, args.first_batch
    while n < args.train_tokens:
        seqs = [corpus.seq(int(j)) for j in plan.batch(b)]
        jobs["train"].append(seqs)
        n += sum(len(s) - 1 for s in seqs)
        b += 1
    for name, texts in held.items():
        enc = [np.asarray(s) for s in lm.tokenizer(texts, add_special_tokens=add)["input_ids"]]
        jobs[name] = [enc[i : i + 8] for i in range(0, len(enc), 8)]
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, batches in jobs.items():
        parts: dict[str, list[torch.Tensor]] = {}
        sizes = []
        for seqs in tqdm(batches, desc=name):
            got = _capture(lm.model, seqs, pad, layers)
            for k, v in got.items():
                parts.setdefault(k, []).append(v)
            sizes.append(int(got[f"x{layers[0]}"].shape[0]))
        out = {k: torch.cat(v) for k, v in parts.items()}
        out["batch_sizes"] = torch.tensor(sizes)
        save_file(out, str(CACHE / f"{name}.safetensors"))
        print(name, "tokens", sum(sizes), flush=True)


def _variants(args: argparse.Namespace) -> dict[str, dict]:
    base = {
        "k": 48,
        "k_aux": 256,
        "aux_coef": 1 / 32,
        "dead_tokens": args.dead_tokens,
        "resample_every": args.resample_every,
        "resample": "v2",
    }
    return {
        "v2": dict(base),
        "fixed": dict(base, resample="fixed"),
        "none": dict(base, resample_every=0),
    }


def _train_layer(i: int, v: dict, t: dict, args, skip: dict) -> SkipTranscoder:
    cfg = PRESETS[args.preset][0]
    x_all, y_all = t[f"x{i}"], t[f"y{i}"]
    sizes = t["batch_sizes"].tolist()
    tc = SkipTranscoder(x_all.shape[1], cfg.width, v["k"], seed=cfg.seed * 1000 + i)
    tc.set_skip(skip[f"W_skip{i}"], skip[f"b_skip{i}"])
    pool = min(cfg.width * 2, x_all.shape[0])
    x0, y0 = x_all[:pool].float(), y_all[:pool].float()
    r0 = y0 - tc.skip(x0)
    tc.init_scales(x0, r0)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + i)
    tc.init_from_data(x0, r0, gen, cfg.enc_init)
    opt = torch.optim.Adam(tc.parameters(), lr=cfg.lr, fused=True)
    seen, start, step = 0, 0, 0
    for n in sizes:
        x, y = x_all[start : start + n].float(), y_all[start : start + n].float()
        start += n
        r = y - tc.skip(x)
        gen.manual_seed(cfg.seed * 1_000_003 + step * 101 + i)
        tc.train_step(
            x,
            r,
            gen=gen,
            tokens_seen=seen,
            dead_tokens=v["dead_tokens"],
            k_aux=v["k_aux"],
            aux_coef=v["aux_coef"],
        )
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        opt.step()
        tc.after_step()
        if v["resample_every"] and (step + 1) % v["resample_every"] == 0:
            init = "token" if v["resample"] == "v2" else "calibrated"
            tc.resample_dead(
                x,
                r,
                tokens_seen=seen + n,
                dead_tokens=v["dead_tokens"],
                gen=gen,
                opt=opt,
                init=init,
            )
        seen += n
        step += 1
    tc.tokens_trained = seen  # type: ignore[attr-defined]
    return tc


@torch.no_grad()
def _measure(tc: SkipTranscoder, held: dict, i: int) -> dict:
    t = tc.export()
    out = {}
    for name, h in held.items():
        x, y = h[f"x{i}"].float(), h[f"y{i}"].double()
        sse, first, act = 0.0, torch.full((tc.width,), -1, dtype=torch.long), 0.0
        for s in range(0, x.shape[0], 2048):
            rec, a = exported_forward(t, x[s : s + 2048])
            sse += float((rec.double() - y[s : s + 2048]).pow(2).sum())
            on = a > 0
            act += float(on.sum())
            new = on.any(0) & (first < 0)
            first[new] = s + on[:, new].float().argmax(0)
        var = float((y - y.mean(0)).pow(2).sum())
        n = x.shape[0]
        curve = {
            m: float(((first < 0) | (first >= m)).float().mean())
            for m in (10_000, 20_000, 50_000)
            if m <= n
        }
        out[name] = {
            "fvu": sse / var,
            "l0": act / n,
            "dead": float((first < 0).float().mean()),
            "dead_at": curve,
            "tokens": n,
        }
    return out


def run(args: argparse.Namespace) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    train = load_file(str(CACHE / "train.safetensors"))
    held = {n: load_file(str(CACHE / f"{n}.safetensors")) for n in ("halueval_qa", "triviaqa")}
    layers = sorted(int(k[1:]) for k in train if k.startswith("x"))
    ck = Path(args.skip_from) / "checkpoint"
    slot = json.loads((ck / "state.json").read_text())["slot"]
    skip = {}
    for i in layers:
        with safe_open(str(ck / slot / f"layer_{i}.safetensors"), framework="pt") as f:
            skip[f"W_skip{i}"] = f.get_tensor("tc.W_skip")
            skip[f"b_skip{i}"] = f.get_tensor("tc.b_skip")
    variants = _variants(args)
    results = {}
    for name in args.variants.split(","):
        v = variants[name]
        t0 = time.monotonic()
        per = {}
        for i in layers:
            tc = _train_layer(i, v, train, args, skip)
            m = _measure(tc, held, i)
            last = tc.tokens_trained - tc.last_active
            m["train_inactive_last_window"] = float((last > v["dead_tokens"]).float().mean())
            per[i] = m
        results[name] = {"settings": v, "layers": per, "seconds": round(time.monotonic() - t0)}
        for i, m in per.items():
            h, q = m["halueval_qa"], m["triviaqa"]
            print(
                f"{name:>10} layer {i:>2}: halueval FVU {h['fvu']:.3f} L0 {h['l0']:.1f} "
                f"dead {h['dead']:.3f} | triviaqa FVU {q['fvu']:.3f} L0 {q['l0']:.1f} "
                f"dead {q['dead']:.3f} | train inactive {m['train_inactive_last_window']:.3f}",
                flush=True,
            )
    results["meta"] = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "train_tokens": int(train["batch_sizes"].sum()),
        "held_tokens": {n: int(h["batch_sizes"].sum()) for n, h in held.items()},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


@torch.no_grad()
def _sweep(t: dict, x: torch.Tensor, y: torch.Tensor, scales, shift=None) -> list[dict]:
    """FVU / L0 of exported tensors ``t`` on ``x, y`` with the threshold × each scale."""
    th0 = t["activation_function.threshold"]
    var = float((y.double() - y.double().mean(0)).pow(2).sum())
    sse = np.zeros(len(scales))
    act = np.zeros(len(scales))
    for s in range(0, x.shape[0], 2048):
        xb, yb = x[s : s + 2048].float(), y[s : s + 2048].double()
        z = torch.nn.functional.linear(xb, t["W_enc"], t["b_enc"])
        base = xb @ t["W_skip"].T + t["b_dec"]
        for j, c in enumerate(scales):
            a = z * (z > th0 * c)
            on = a > 0
            act[j] += float(on.sum())
            rec = base + a.to_sparse_csr() @ t["W_dec"]
            if shift is not None:
                rec = rec + shift[j]
            sse[j] += float((rec.double() - yb).pow(2).sum())
    n = x.shape[0]
    return [{"scale": c, "l0": act[j] / n, "fvu": sse[j] / var} for j, c in enumerate(scales)]


@torch.no_grad()
def thresholds(args: argparse.Namespace) -> None:
    """FVU against L0 of a trained set's layers when its thresholds are raised (held-out
    cache), with and without re-centring ``b_dec`` on the training cache."""
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    scales = [float(v) for v in args.scales.split(",")]
    train = load_file(str(CACHE / "train.safetensors"))
    held = {n: load_file(str(CACHE / f"{n}.safetensors")) for n in ("halueval_qa", "triviaqa")}
    layers = sorted(int(k[1:]) for k in train if k.startswith("x"))
    out = {}
    for i in layers:
        t = load_file(str(Path(args.set) / f"layer_{i}.safetensors"))
        x = train[f"x{i}"][: args.shift_tokens].float()
        z = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
        th0 = t["activation_function.threshold"]
        shift = []
        for c in scales:
            dropped = z * ((z > th0) & (z <= th0 * c))
            shift.append(dropped.mean(0) @ t["W_dec"])
        for name, h in held.items():
            x, y = h[f"x{i}"], h[f"y{i}"]
            plain = _sweep(t, x, y, scales)
            shifted = _sweep(t, x, y, scales, shift)
            for p, q in zip(plain, shifted, strict=True):
                p["fvu_shifted"] = q["fvu"]
            out[f"{name}/{i}"] = plain
            for p in plain:
                print(
                    f"layer {i:>2} {name:>12} x{p['scale']:.2f}: L0 {p['l0']:6.1f} "
                    f"FVU {p['fvu']:.4f} (b_dec re-centred {p['fvu_shifted']:.4f})",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


@torch.no_grad()
def curve(args: argparse.Namespace) -> None:
    """Share of a trained set's features not yet active after N held-out tokens (cached
    layers): per held-out set and for both together (HaluEval-QA tokens first)."""
    from safetensors.torch import load_file

    held = {n: load_file(str(CACHE / f"{n}.safetensors")) for n in ("halueval_qa", "triviaqa")}
    layers = sorted(int(k[1:]) for k in held["triviaqa"] if k.startswith("x"))
    marks = (5_000, 10_000, 20_000, 36_000, 50_000, 100_000)
    out: dict[str, dict] = {}
    for i in layers:
        t = load_file(str(Path(args.set) / f"layer_{i}.safetensors"))
        th = t["activation_function.threshold"]
        firsts = {}
        for name, h in held.items():
            x = h[f"x{i}"]
            first = torch.full((th.shape[0],), -1, dtype=torch.long)
            for s in range(0, x.shape[0], 2048):
                z = torch.nn.functional.linear(x[s : s + 2048].float(), t["W_enc"], t["b_enc"])
                on = z > th
                new = on.any(0) & (first < 0)
                first[new] = s + on[:, new].float().argmax(0)
            firsts[name] = (first, x.shape[0])
        (fh, nh), (ft, nt) = firsts["halueval_qa"], firsts["triviaqa"]
        both = torch.where(fh >= 0, fh, torch.where(ft >= 0, ft + nh, -1))
        firsts["both"] = (both, nh + nt)
        for name, (first, n) in firsts.items():
            pts = {m: float(((first < 0) | (first >= m)).float().mean()) for m in marks if m <= n}
            pts[n] = float((first < 0).float().mean())
            out[f"{name}/{i}"] = pts
            print(
                f"layer {i:>2} {name:>12}: "
                + ", ".join(f"{m // 1000}k {100 * v:.1f}%" for m, v in pts.items()),
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--layers", default="4,10,16")
    c.add_argument("--preset", default="smollm2-135m-2h-v2")
    c.add_argument("--train-tokens", type=int, default=120_000)
    c.add_argument("--first-batch", type=int, default=16, help="after the v2 skip phase")
    c.add_argument("--eval-tokens", type=int, default=60_000)
    c.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("run")
    r.add_argument("--preset", default="smollm2-135m-2h-v2")
    r.add_argument("--variants", default="v2,fixed")
    r.add_argument("--dead-tokens", type=int, default=20_000)
    r.add_argument("--resample-every", type=int, default=10)
    r.add_argument(
        "--skip-from",
        default=str(Path.home() / ".cache/hallugraph/transcoders/smollm2_135M/smollm2-135m-2h-v2"),
    )
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--json", default=None)
    th = sub.add_parser("thresholds")
    th.add_argument(
        "--set",
        default=str(Path.home() / ".cache/hallugraph/transcoders/smollm2_135M/smollm2-135m-2h-v2"),
    )
    th.add_argument("--scales", default="1,1.05,1.1,1.15,1.2,1.3")
    th.add_argument("--shift-tokens", type=int, default=20_000)
    th.add_argument("--threads", type=int, default=1)
    th.add_argument("--json", default=None)
    cu = sub.add_parser("curve")
    cu.add_argument("--set", default=th.get_default("set"))
    cu.add_argument("--threads", type=int, default=1)
    cu.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"capture": capture, "run": run, "thresholds": thresholds, "curve": curve}[args.cmd](args)


if __name__ == "__main__":
    main()

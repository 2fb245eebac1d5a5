"""Bytes, speed and exactness of the predictive codec (``--codec predictive``) on a stored run.

Takes a run extracted with ``--keep-tensors yes`` and the default fp16 codec, rewrites its
first N traces into two temporary runs through :class:`hallugraph.store.TraceWriter` — plain
fp16 and predictive — and compares, per trace:

* bytes on disk (shards + shared prefix + manifest + run.json, divided by N) against the
  record the seed script describes (full fp32 tensors, pickled: ``baseline_record_bytes``,
  as in ``benchmarks/extract_vs_original.py``);
* seconds to encode (``TraceWriter.encode``) and to read back (``TraceStore[i]``);
* exactness: elements of the decoded tensors that differ from the stored fp16 ones (expect 0),
  and the same for a decode run with ``torch.set_num_threads(1)`` of traces encoded with
  ``--threads`` threads (checksum check off, so the difference can be counted; its size is
  given in fp16 ulps).

    .venv/bin/hallugraph extract --dataset triviaqa --num-samples 30 --out /tmp/tqa30
    .venv/bin/python benchmarks/store_codec.py /tmp/tqa30 --num-traces 30
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from extract_vs_original import baseline_record_bytes  # benchmarks/ is on sys.path

from hallugraph.models import load_model
from hallugraph.store import TraceStore, TraceWriter, pack_tril
from hallugraph.store.codec import Predictor, decode_trace, ordered_int

DERIVED = ("model_id", "generation")  # added by TraceStore from run.json, not in the manifest


def rewrite(src: TraceStore, traces, out: Path, codec: str, predictor=None):
    """The traces as a new run with ``codec``; returns (run dir, encode seconds per trace)."""
    info = {k: v for k, v in src.info.items() if k not in ("codec", "codec_fingerprint")}
    prefix = [int(t) for t in traces[0]["tokens"][: int(src.info.get("prefix_len", 0))]]
    w = TraceWriter(
        out,
        info,
        shard_name=src.info["shard_name"],
        shard_size=len(traces),
        prefix_tokens=prefix,
        codec=codec,
        predictor=predictor,
    )
    meta_keys = [k for k in traces[0] if k not in ("hidden_states", "attentions")]
    seconds = []
    for t in traces:
        meta = {k: t[k] for k in meta_keys if k not in ("index", "shard", "key", *DERIVED)}
        packed = pack_tril(t["attentions"])
        t0 = time.perf_counter()
        w.append(w.encode(meta, t["hidden_states"], packed))
        seconds.append(time.perf_counter() - t0)
    w.close()
    return out, float(np.mean(seconds))


def differing(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Elements whose fp16 bits differ, and the largest difference in fp16 ulps."""
    d = np.abs(ordered_int(a) - ordered_int(b))
    return int((d != 0).sum()), int(d.max()) if d.size else 0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", help="run directory (fp16 codec, --keep-tensors yes)")
    ap.add_argument("--num-traces", type=int, default=30)
    ap.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads for encoding and reading (default: torch's, %(default)s)",
    )
    args = ap.parse_args()
    src = TraceStore(args.run)
    if src.codec != "fp16" or src.info.get("dtype") != "float16":
        raise SystemExit(f"{args.run}: need a run stored with the default fp16 codec")
    torch.set_num_threads(args.threads)
    lm = load_model(src.info["model"], dtype=src.info.get("model_dtype", "float32"), device="cpu")
    predictor = Predictor(lm)
    n = min(args.num_traces, len(src))
    traces = [src[i] for i in range(n)]
    base = [baseline_record_bytes(t) for t in traces]
    tmp = Path(tempfile.mkdtemp(prefix="store_codec_"))
    try:
        plain_dir, enc_plain = rewrite(src, traces, tmp / "plain", "fp16")
        pred_dir, enc_pred = rewrite(src, traces, tmp / "pred", "predictive", predictor)
        plain, pred = TraceStore(plain_dir), TraceStore(pred_dir, model=predictor)
        timing = {}
        for name, store in (("plain", plain), ("pred", pred)):
            t0 = time.perf_counter()
            got = [store[i] for i in range(n)]
            timing[name] = (time.perf_counter() - t0) / n
            if name == "pred":
                decoded = got
        bad = total = 0
        for t, d in zip(traces, decoded, strict=True):
            for f in ("hidden_states", "attentions"):
                bad += differing(t[f], d[f])[0]
                total += t[f].size
        # decode with one thread what was encoded with --threads threads
        torch.set_num_threads(1)
        p = int(src.info.get("prefix_len", 0))
        prefix = pred._prefix()["prefix.hidden_states"] if p else None
        bad1 = worst1 = total1 = 0
        t0 = time.perf_counter()
        with pred._open(pred.shards[0]) as fh:
            for t, row in zip(traces, pred.manifest, strict=True):
                blocks = {
                    f: fh.get_tensor(f"{row['key']}.{f}") for f in ("hidden_states", "attentions")
                }
                h, a = decode_trace(predictor, row["tokens"], prefix, blocks, verify=False)
                for got, want in (
                    (h, t["hidden_states"][:, p:]),
                    (a, pack_tril(t["attentions"], p)),
                ):
                    c, m = differing(got, want)
                    bad1, worst1 = bad1 + c, max(worst1, m)
                    total1 += want.size
        dec1 = (time.perf_counter() - t0) / n
        torch.set_num_threads(args.threads)
        size_plain = plain.disk_usage()["total"] / n
        size_pred = pred.disk_usage()["total"] / n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb = 2**20
    b = float(np.mean(base))
    lens = [len(t["tokens"]) for t in traces]
    print(
        f"{args.run}: {n} traces, {src.info['model']}, tokens/trace mean {np.mean(lens):.0f}, "
        f"shared prefix {p} tokens, torch threads {args.threads}"
    )
    print()
    print("| store | MB / trace | ratio to fp32 pickle | encode s / trace | read s / trace |")
    print("|---|---:|---:|---:|---:|")
    print(f"| fp32 pickled record (baseline) | {b / mb:.3f} | 1 | | |")
    print(
        f"| fp16 (default) | {size_plain / mb:.3f} | 1/{b / size_plain:.1f} | {enc_plain:.4f} "
        f"| {timing['plain']:.4f} |"
    )
    print(
        f"| predictive | {size_pred / mb:.3f} | 1/{b / size_pred:.1f} | {enc_pred:.3f} "
        f"| {timing['pred']:.3f} |"
    )
    print()
    print(f"predictive / fp16: 1/{size_plain / size_pred:.2f}")
    print(f"exactness, decoded vs stored fp16: {bad} of {total} elements differ")
    print(
        f"decoded with 1 thread (encoded with {args.threads}): {bad1} of {total1} own-row "
        f"elements differ, max {worst1} fp16 ulps ({dec1:.3f} s / trace)"
    )


if __name__ == "__main__":
    main()

"""Extraction speed and bytes: hallugraph against the seed script's approach, in one process.

The original approach, per example: ``generate(num_beams=5, early_stopping=True,
max_new_tokens=64, return_dict_in_generate=True, output_attentions=True,
output_hidden_states=True)``. Its record kept only ``hidden_states[-1]`` (the newest token: a
bug); the bytes baseline is the record it *describes*: full-sequence hidden states of every
layer and full attention maps, fp32, pickled.

Prints: per-example time ratio original / hallugraph (target >= 20x), what capture adds on top
of plain batched ``generate`` (target <= 25 %), and bytes per trace over the baseline record
(target <= 1/8), for the default fp16 store and for ``--codec predictive`` (whose traces are
checked to read back bit-identical to the fp16 ones).

    .venv/bin/python benchmarks/extract_vs_original.py --num-samples 30
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hallugraph.data import load_dataset
from hallugraph.extract import GenerationSettings, prepare
from hallugraph.extract.capture import _left_pad as left_pad
from hallugraph.extract.capture import eos_ids as eos_ids
from hallugraph.extract.decoding import PrefixDecoder
from hallugraph.models import load_model
from hallugraph.pipeline import prefix_tokens, run_extract
from hallugraph.store import TraceStore


def original(lm, prepared, max_new_tokens):
    """The seed script: one example at a time, beam search 5, every output switched on."""
    t0 = time.perf_counter()
    for p in prepared:
        ids = torch.tensor([p.prompt_ids])
        with torch.no_grad():
            lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                num_beams=5,
                early_stopping=True,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                output_attentions=True,
                output_hidden_states=True,
                pad_token_id=lm.tokenizer.pad_token_id,
                eos_token_id=eos_ids(lm),
            )
    return time.perf_counter() - t0


def plain_generate(lm, prepared, gs, attn):
    """Batched greedy generate, same batches as hallugraph, no outputs captured."""
    lm.model.set_attn_implementation(attn)
    t0 = time.perf_counter()
    for batch in gs.batches(prepared):
        ids, mask = left_pad([p.prompt_ids for p in batch], lm.tokenizer.pad_token_id, "cpu")
        with torch.no_grad():
            lm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=gs.max_new_tokens,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
                eos_token_id=eos_ids(lm),
            )
    lm.model.set_attn_implementation("eager")
    return time.perf_counter() - t0


def decoder_only(lm, prepared, gs, prefix):
    """hallugraph's prefix-cached greedy decoder with capture switched off."""
    dec = PrefixDecoder(lm.model, prefix)
    t0 = time.perf_counter()
    for batch in gs.batches(prepared):
        dec.decode(
            [p.prompt_ids for p in batch],
            gs.max_new_tokens,
            eos_ids(lm),
            lm.tokenizer.pad_token_id,
            record=False,
        )
    return time.perf_counter() - t0


def ours(lm, examples, gs, out, codec="fp16"):
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run_extract(
        model="smollm2_135M",
        dataset="triviaqa",
        out=out,
        settings=gs,
        lm=lm,
        progress=False,
        examples=examples,
        codec=codec,
    )
    return time.perf_counter() - t0


def baseline_record_bytes(trace):
    """Bytes of the record the original describes: full fp32 tensors, pickled."""
    rec = {
        "question_id": trace["question_id"],
        "generated_answer_clean": trace["generated_answer_clean"],
        "hidden_states": trace["hidden_states"].astype(np.float32),
        "attentions": trace["attentions"].astype(np.float32),
        "tokens": np.asarray(trace["tokens"]),
        "tokens_decoded": trace["tokens_decoded"],
    }
    return len(pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--num-samples", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=GenerationSettings.batch_size)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--skip-original", action="store_true", help="skip the slow per-example baseline"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model("smollm2_135M")
    examples = load_dataset("triviaqa", num_samples=args.num_samples)
    prepared = prepare(lm, examples)
    prefix = prefix_tokens(lm, prepared, None)
    n = len(examples)

    def settings(**kw):
        return GenerationSettings(
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **kw
        )

    gs = settings()
    tmp = Path(tempfile.mkdtemp(prefix="hg_bench_"))
    # warm-up (first calls allocate and pick kernels)
    plain_generate(lm, prepared[: min(4, n)], gs, "eager")
    decoder_only(lm, prepared[: min(4, n)], gs, prefix)

    t = {}
    t["plain batched generate (transformers, sdpa)"] = plain_generate(lm, prepared, gs, "sdpa")
    t["plain batched generate (transformers, eager)"] = plain_generate(lm, prepared, gs, "eager")
    t["prefix-cached decoder, no capture"] = decoder_only(lm, prepared, gs, prefix)
    t["hallugraph extract (default: decoder + capture)"] = ours(lm, examples, gs, tmp / "ours")
    t["hallugraph extract --codec predictive"] = ours(
        lm, examples, gs, tmp / "pred", codec="predictive"
    )
    t["hallugraph extract (generate + incremental capture)"] = ours(
        lm, examples, settings(decoder="transformers"), tmp / "hf"
    )
    t["hallugraph extract (generate + forward capture)"] = ours(
        lm, examples, settings(capture="forward"), tmp / "fwd"
    )
    if not args.skip_original:
        t["original: per-example beam-5 generate + outputs"] = original(
            lm, prepared, args.max_new_tokens
        )

    print(
        f"\nExtraction on {n} TriviaQA questions, SmolLM2-135M-Instruct (fp32), "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}"
    )
    print(f"{'approach':<56} {'total s':>8} {'s/example':>10}")
    for name, sec in t.items():
        print(f"{name:<56} {sec:8.1f} {sec / n:10.3f}")
    t_ours = t["hallugraph extract (default: decoder + capture)"]
    t_plain = min(
        t["plain batched generate (transformers, sdpa)"],
        t["plain batched generate (transformers, eager)"],
    )
    if not args.skip_original:
        t_orig = t["original: per-example beam-5 generate + outputs"]
        print(
            f"\nspeed-up original / hallugraph (per example): {t_orig / t_ours:.1f}x  "
            f"(target >= 20x); with --codec predictive: "
            f"{t_orig / t['hallugraph extract --codec predictive']:.1f}x"
        )
    print(
        "capture cost over generation without capture: "
        f"{100 * (t_ours / t['prefix-cached decoder, no capture'] - 1):+.1f} % over the same "
        f"decoder, {100 * (t_ours / t_plain - 1):+.1f} % over plain batched generate "
        "(target <= 25 %)"
    )
    store = TraceStore(tmp / "ours")
    base = [baseline_record_bytes(tr) for tr in store]
    total = store.disk_usage()["total"]
    lens = [r["seq_len"] for r in store.manifest]
    print(
        f"\nbytes per trace: hallugraph {total / n / 2**20:.3f} MB "
        f"(fp16, shared prefix {store.info['prefix_len']} tokens, "
        f"tokens/trace mean {np.mean(lens):.0f})"
    )
    print(f"  original's described record (fp32, full, pickled): {np.mean(base) / 2**20:.3f} MB")
    print(f"  ratio hallugraph / original: 1/{np.sum(base) / total:.1f}  (target <= 1/8)")
    pred = TraceStore(tmp / "pred", model=lm)
    for a, b in zip(store, pred, strict=True):  # lossless: the same fp16 bits
        for field in ("hidden_states", "attentions"):
            assert np.array_equal(a[field].view(np.uint16), b[field].view(np.uint16)), field
    total_pred = pred.disk_usage()["total"]
    print(
        f"  with --codec predictive: {total_pred / n / 2**20:.3f} MB per trace, "
        f"1/{np.sum(base) / total_pred:.1f} (read back bit-identical to the fp16 store)"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

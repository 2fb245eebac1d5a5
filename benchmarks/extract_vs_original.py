"""Extraction speed and bytes: hallugraph against the seed script's approach, in one process.

The original approach, per example: ``generate(num_beams=5, early_stopping=True,
max_new_tokens=64, return_dict_in_generate=True, output_attentions=True,
output_hidden_states=True)``. Its record kept only ``hidden_states[-1]`` (the newest token: a
bug); the bytes baseline is the record it *describes*: full-sequence hidden states of every
layer and full attention maps, fp32, pickled.

Prints: per-example time ratio original / hallugraph (target >= 20x), what capture adds on top
of plain batched ``generate`` (target <= 25 %), and bytes per trace over the baseline record
(target <= 1/8).

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

from hallugraph.datasets import load_dataset
from hallugraph.extract import GenerationSettings, iter_batches, prepare
from hallugraph.extract import _eos_ids as eos_ids
from hallugraph.extract import _left_pad as left_pad
from hallugraph.models import load_model
from hallugraph.pipeline import run_extract
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
    for batch in iter_batches(prepared, gs.batch_size):
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


def ours(lm, examples, gs, out):
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
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--skip-original", action="store_true", help="skip the slow per-example baseline"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model("smollm2_135M")
    examples = load_dataset("triviaqa", num_samples=args.num_samples)
    prepared = prepare(lm, examples)
    n = len(examples)
    gs = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="hg_bench_"))
    # warm-up (first calls allocate and pick kernels)
    plain_generate(lm, prepared[: min(4, n)], gs, "eager")

    rows = []
    t_plain_sdpa = plain_generate(lm, prepared, gs, "sdpa")
    t_plain_eager = plain_generate(lm, prepared, gs, "eager")
    t_plain = min(t_plain_sdpa, t_plain_eager)
    t_ours = ours(lm, examples, gs, tmp / "incremental")
    t_fwd = ours(
        lm,
        examples,
        GenerationSettings(
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, capture="forward"
        ),
        tmp / "forward",
    )
    rows += [
        ("plain batched generate (sdpa, no capture)", t_plain_sdpa),
        ("plain batched generate (eager, no capture)", t_plain_eager),
        ("hallugraph extract (greedy, incremental capture)", t_ours),
        ("hallugraph extract (greedy, forward capture)", t_fwd),
    ]
    t_orig = None
    if not args.skip_original:
        t_orig = original(lm, prepared, args.max_new_tokens)
        rows.append(("original: per-example beam-5 generate + outputs", t_orig))

    print(
        f"\nExtraction on {n} TriviaQA questions, SmolLM2-135M-Instruct, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'approach':<52} {'total s':>8} {'s/example':>10}")
    for name, t in rows:
        print(f"{name:<52} {t:8.1f} {t / n:10.3f}")
    if t_orig is not None:
        print(
            f"\nspeed-up original / hallugraph (per example): {t_orig / t_ours:.1f}x"
            "  (target >= 20x)"
        )
    print(
        "capture overhead over plain generate: "
        f"incremental {100 * (t_ours / t_plain - 1):+.1f} %, "
        f"forward {100 * (t_fwd / t_plain - 1):+.1f} %  (target <= 25 %)"
    )

    store = TraceStore(tmp / "incremental")
    base = [baseline_record_bytes(t) for t in store]
    total = store.disk_usage()["total"]
    lens = [r["seq_len"] for r in store.manifest]
    print(
        f"\nbytes per trace: hallugraph {total / n / 2**20:.3f} MB "
        f"(fp16, shared prefix {store.info['prefix_len']} tokens, "
        f"tokens/trace mean {np.mean(lens):.0f})"
    )
    print(f"  original's described record (fp32, full, pickled): {np.mean(base) / 2**20:.3f} MB")
    print(f"  ratio hallugraph / original: 1/{np.sum(base) / total:.1f}  (target <= 1/8)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

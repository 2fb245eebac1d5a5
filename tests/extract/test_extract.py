"""Capture correctness: stored traces must equal an independent forward pass over their tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import assert_trace_matches_forward, extract_toy

from hallugraph.data import Example
from hallugraph.extract import GenerationSettings, capture_batch, prepare, shared_prefix_len
from hallugraph.store import TraceStore

QUESTIONS = [
    "Who was the man behind The Chipmunks?",
    "What star sign is Jamie Lee Curtis?",
    "Which city is the capital of France?",
    "Who jumps over the lazy dog?",
    "What is 0123?",
    "Which magazine was published in Philadelphia?",
    "Who?",
]


def examples(n: int = len(QUESTIONS), context: bool = False) -> list[Example]:
    ctx = "Arthur's Magazine was an American literary periodical published in Philadelphia."
    return [
        Example(id=f"q{i}", question=q, references=("x",), context=ctx if context else None)
        for i, q in enumerate(QUESTIONS[:n])
    ]


def _eos_mid_sequence(lm, exs):
    """Pick an EOS id that greedy decoding emits mid-answer for some examples, not all."""
    prep = prepare(lm, exs)
    gs = GenerationSettings(max_new_tokens=8, capture="forward")
    traces = capture_batch(lm, prep, gs)
    seen = [t.meta["tokens"][t.meta["prompt_len"] :] for t in traces]
    for cand in seen[0][1:4]:
        if sum(cand in s for s in seen) < len(seen):
            return cand
    pytest.skip("no suitable mid-answer token in this random model")


MODES = [
    ("incremental", "hallugraph"),
    ("incremental", "transformers"),
    ("forward", "auto"),  # generate, then the prefix-cached decoder's teacher-forced pass
    ("forward", "transformers"),  # generate, then a transformers forward pass
]


@pytest.mark.parametrize("capture,decoder", MODES)
@pytest.mark.parametrize("context", [False, True])
def test_stored_traces_equal_independent_forward(
    tiny_lm, tmp_path, capture, decoder, context, monkeypatch
):
    exs = examples(context=context)
    eos = _eos_mid_sequence(tiny_lm, exs)
    monkeypatch.setattr(
        tiny_lm.model.generation_config, "eos_token_id", [tiny_lm.tokenizer.eos_token_id, eos]
    )
    gs = GenerationSettings(max_new_tokens=10, batch_size=4, capture=capture, decoder=decoder)
    summary = extract_toy(tiny_lm, tmp_path / "run", exs, gs, shard_size=3)
    assert summary.total == len(exs) and summary.errors == 0
    store = TraceStore(tmp_path / "run")
    lens = set()
    for trace in store:
        assert_trace_matches_forward(tiny_lm, trace)
        lens.add(trace["answer_len"])
        if context:
            s, e = trace["context_span"]
            text = tiny_lm.tokenizer.decode(trace["tokens"][s:e])
            assert exs[0].context in text and len(text) < len(exs[0].context) + 4
    assert len(lens) > 1, "expected both early-stopped and max-length answers"
    assert store.info["prefix_len"] > 10  # the chat header + instruction is shared


def test_all_capture_modes_agree(tiny_lm):
    prep = prepare(tiny_lm, examples())
    prefix = prep[0].prompt_ids[: shared_prefix_len(prep)]
    runs = [
        capture_batch(
            tiny_lm, prep, GenerationSettings(max_new_tokens=6, capture=c, decoder=d), prefix
        )
        for c, d in MODES
    ]
    for a, b in zip(runs[0], runs[1], strict=True):
        assert a.meta["tokens"] == b.meta["tokens"]
    for other in runs[1:]:
        for x, y in zip(runs[0], other, strict=True):
            assert x.meta["tokens"] == y.meta["tokens"]
            (xh, xa), (yh, ya) = x.full(), y.full()
            torch.testing.assert_close(xh, yh, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(xa, ya, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(
                x.meta["token_logprobs"], y.meta["token_logprobs"], atol=1e-4
            )


def test_beam_search_path(tiny_lm, tmp_path):
    exs = examples(4)
    gs = GenerationSettings(max_new_tokens=6, num_beams=5, batch_size=4)
    assert gs.capture_mode() == "forward"
    extract_toy(tiny_lm, tmp_path / "r", exs, gs)
    store = TraceStore(tmp_path / "r")
    for ex, trace in zip(exs, store, strict=True):
        assert_trace_matches_forward(tiny_lm, trace)
        # the answer is what unbatched beam search gives for this prompt
        ids = torch.tensor([prepare(tiny_lm, [ex])[0].prompt_ids])
        ref = tiny_lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=5,
            max_new_tokens=6,
            do_sample=False,
            early_stopping=True,
            pad_token_id=tiny_lm.tokenizer.pad_token_id,
        )[0, ids.shape[1] :].tolist()
        got = trace["tokens"][trace["prompt_len"] :]
        assert ref[: len(got)] == got


@pytest.mark.parametrize("decoder", ["auto", "transformers"])  # prefix-cached / transformers
@pytest.mark.parametrize("context", [False, True])
def test_given_answers_are_teacher_forced(tiny_lm, tmp_path, decoder, context):
    ctx = "Arthur's Magazine was an American literary periodical published in Philadelphia."
    exs = [
        Example(id=f"g{i}", question=q, references=(), answer=a, context=ctx if context else None)
        for i, (q, a) in enumerate(
            [
                ("Who?", "David Seville"),
                ("What star sign is Jamie Lee Curtis?", "Scorpio, of course"),
                ("Which city?", "Paris"),
            ]
        )
    ]
    gs = GenerationSettings(decoder=decoder)
    extract_toy(tiny_lm, tmp_path / "r", exs, gs)
    store = TraceStore(tmp_path / "r")
    for ex, trace in zip(exs, store, strict=True):
        assert trace["answer_source"] == "given"
        assert trace["generated_answer_clean"] == ex.answer
        assert trace["tokens"][-1] == tiny_lm.tokenizer.eos_token_id
        assert_trace_matches_forward(tiny_lm, trace)


def test_shared_prefix_is_common_prompt_start(tiny_lm):
    prep = prepare(tiny_lm, examples())
    k = shared_prefix_len(prep)
    assert k > 0
    assert len({tuple(p.prompt_ids[:k]) for p in prep}) == 1
    assert len({p.prompt_ids[k] for p in prep}) > 1


def test_decoder_skips_padding_and_finished_rows(tiny_lm, tmp_path, monkeypatch):
    """One batch of 7 with early stops: the decoder computes only real, unfinished rows (left
    padding and finished sequences still in the batch are skipped), and traces stay exact."""
    from hallugraph.extract import decoding

    exs = examples()
    eos = _eos_mid_sequence(tiny_lm, exs)
    monkeypatch.setattr(
        tiny_lm.model.generation_config, "eos_token_id", [tiny_lm.tokenizer.eos_token_id, eos]
    )
    computed: list[tuple[int, int]] = []  # (rows computed, positions in the batch)
    forward = decoding.PrefixDecoder._forward

    def counting(self, ids, pos, kv, T, key_mask, rows=None, own=None):
        hs, at = forward(self, ids, pos, kv, T, key_mask, rows, own)
        computed.append((hs.shape[1], ids.numel()))
        return hs, at

    monkeypatch.setattr(decoding.PrefixDecoder, "_forward", counting)
    gs = GenerationSettings(max_new_tokens=10, batch_size=len(exs), decoder="hallugraph")
    extract_toy(tiny_lm, tmp_path / "run", exs, gs)
    store = TraceStore(tmp_path / "run")
    for trace in store:
        assert_trace_matches_forward(tiny_lm, trace)
    suffixes = [r["seq_len"] - r["answer_len"] - store.info["prefix_len"] for r in store.manifest]
    # the prompts' step (the shared prefix may have been computed by an earlier test)
    assert (sum(suffixes), len(exs) * max(suffixes)) in computed
    steps = [c for c in computed if c[1] == len(exs)]  # one token per sequence, none dropped yet
    assert any(r < n for r, n in steps), "no step ran with a finished row skipped"

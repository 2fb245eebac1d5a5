"""Batches cut by a token budget (issue 16): a batch of long prompts is split, so the peak
memory of a run stops growing with the longest prompt it draws; the cut is a pure function of
the prompts, and the traces do not depend on it beyond float rounding."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tiny_models import extract_toy

from hallugraph.data import Example
from hallugraph.extract import GenerationSettings, capture_batch, iter_batches, prepare
from hallugraph.extract.capture import TYPICAL_PROMPT_TOKENS
from hallugraph.extract.inputs import Prepared, sequence_len
from hallugraph.pipeline.worker import prefix_tokens
from hallugraph.store import StoreError
from hallugraph.store.layout import RUN_INFO


def _prepared(prompt_lens, answer_lens=None) -> list[Prepared]:
    answer_lens = answer_lens or [None] * len(prompt_lens)
    return [
        Prepared(
            Example(id=f"e{i}", question="q", references=()),
            "",
            list(range(n)),
            None,
            None if a is None else [0] * a,
        )
        for i, (n, a) in enumerate(zip(prompt_lens, answer_lens, strict=True))
    ]


def _cost(batch, new_tokens):
    return len(batch), max(sequence_len(p, new_tokens) for p in batch)


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("budget", [1, 300, 1500, 5000])
def test_batches_respect_the_budget_and_cover_every_prompt_once(forced, budget):
    rng = random.Random(budget)
    lens = [rng.choice([rng.randint(5, 60), rng.randint(60, 400)]) for _ in range(200)]
    answers = [rng.randint(1, 40) for _ in lens] if forced else None
    prepared = _prepared(lens, answers)
    size, new = 16, 20
    batches = list(iter_batches(prepared, size, budget, new))
    for b in batches:
        n, s = _cost(b, new)
        assert n <= size
        if n > 1:  # a sequence over the budget on its own has a batch of its own
            assert n * s <= budget and n * s * s * size <= budget**2
    ids = [p.example.id for b in batches for p in b]
    assert sorted(ids) == sorted(p.example.id for p in prepared) and len(set(ids)) == len(ids)
    # deterministic order: by prompt length, ties in input order; and the same cut every time
    assert ids == [p.example.id for p in sorted(prepared, key=lambda p: len(p.prompt_ids))]
    assert [[p.example.id for p in b] for b in iter_batches(list(prepared), size, budget, new)] == [
        [p.example.id for p in b] for b in batches
    ]
    # greedy: each batch stopped only because the next prompt would not fit
    for b, nxt in zip(batches, batches[1:], strict=False):
        n, s = _cost(b + nxt[:1], new)
        assert n > size or n * s > budget or n * s * s * size > budget**2


def test_without_a_budget_batches_are_chunks_of_batch_size():
    prepared = _prepared([9, 3, 400, 7, 3, 50, 1])
    for budget in (None, 0):
        got = [[p.example.id for p in b] for b in iter_batches(prepared, 3, budget, 64)]
        assert got == [["e6", "e1", "e4"], ["e3", "e0", "e5"], ["e2"]]


def test_a_long_prompt_ends_up_in_a_smaller_batch():
    gs = GenerationSettings()  # the defaults: batches of 32, budget 32 x (96 + 64) tokens
    assert gs.token_budget() == 32 * (TYPICAL_PROMPT_TOKENS + 64)
    # a TriviaQA unit like unit 5 of the first 1,000: 63 prompts of 50-88 tokens and one of 162
    lens = [50 + (i * 7) % 39 for i in range(63)] + [162]
    batches = list(gs.batches(_prepared(lens)))
    sizes = [len(b) for b in batches]
    assert sizes == [32, 31, 1]
    assert [len(p.prompt_ids) for p in batches[-1]] == [162]
    # ordinary prompts (up to TYPICAL_PROMPT_TOKENS): the batches of batch_size are kept
    ordinary = _prepared([40 + i % (TYPICAL_PROMPT_TOKENS - 39) for i in range(96)])
    assert [len(b) for b in gs.batches(ordinary)] == [32, 32, 32]
    # and the budget follows --batch-size and --max-new-tokens
    assert GenerationSettings(batch_size=8, max_new_tokens=10).token_budget() == 8 * 106
    assert [len(b) for b in GenerationSettings(batch_tokens=0).batches(_prepared(lens))] == [32, 32]
    with pytest.raises(ValueError, match="--batch-tokens"):
        GenerationSettings(batch_tokens=-1).token_budget()


def _examples(n: int, long_every: int = 4, answers: bool = False) -> list[Example]:
    words = "the quick brown fox jumps over the lazy dog".split()
    out = []
    for i in range(n):
        k = 3 + i % 5 + (40 if i % long_every == 0 else 0)
        q = " ".join(words[(i + j) % len(words)] for j in range(k)) + "?"
        out.append(
            Example(
                id=f"x{i}",
                question=q,
                references=("Paris",),
                answer=(" ".join(words[: 1 + i % 6]) if answers else None),
            )
        )
    return out


@pytest.mark.parametrize(
    "answers,capture,decoder",
    [
        (False, "incremental", "hallugraph"),  # greedy, the prefix-cached decoder
        (False, "incremental", "transformers"),  # greedy, transformers' generate
        (True, "auto", "auto"),  # given answers, teacher-forced by the decoder
        (True, "auto", "transformers"),  # given answers, a transformers forward pass
    ],
)
def test_traces_do_not_depend_on_the_split(tiny_lm, answers, capture, decoder):
    """The same prompts captured in one batch and in the budget's smaller batches give the
    same traces: the same tokens, the same tensors to float rounding (the split changes the
    padding and the row counts of the matrix products; on this CPU the prefix-cached decoder's
    tensors come out bit-identical, transformers' to ~1e-7)."""
    prepared = prepare(tiny_lm, _examples(12, answers=answers))
    prefix = prefix_tokens(tiny_lm, prepared, None)
    new = 6
    whole = GenerationSettings(
        max_new_tokens=new, batch_size=12, batch_tokens=0, capture=capture, decoder=decoder
    )
    budget = 12 * 30  # the long prompts (~60 tokens) in batches of their own or in pairs
    split = GenerationSettings(
        max_new_tokens=new, batch_size=12, batch_tokens=budget, capture=capture, decoder=decoder
    )
    batches = list(split.batches(prepared))
    assert len(list(whole.batches(prepared))) == 1 and len(batches) > 2
    assert min(len(b) for b in batches) < max(len(b) for b in batches)
    one = {t.meta["question_id"]: t for t in capture_batch(tiny_lm, prepared, whole, prefix)}
    many = {
        t.meta["question_id"]: t for b in batches for t in capture_batch(tiny_lm, b, split, prefix)
    }
    assert list(sorted(one)) == list(sorted(many))
    diffs = []
    for q, a in one.items():
        b = many[q]
        assert a.meta["tokens"] == b.meta["tokens"]
        assert a.row_start == b.row_start
        (ah, aa), (bh, ba) = a.full(), b.full()
        assert ah.shape == bh.shape and aa.shape == ba.shape
        torch.testing.assert_close(ah, bh, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(aa, ba, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            torch.tensor(a.meta["token_logprobs"]),
            torch.tensor(b.meta["token_logprobs"]),
            rtol=1e-5,
            atol=1e-6,
        )
        diffs.append(max((ah - bh).abs().max().item(), (aa - ba).abs().max().item()))
    print(f"{capture}/{decoder}: max |diff| {max(diffs):.3g}, bit-identical: {max(diffs) == 0}")


def test_run_records_the_budget_and_resumes_an_older_run(tiny_lm, tmp_path):
    exs = _examples(6)
    gs = GenerationSettings(max_new_tokens=3, batch_size=4)
    out = tmp_path / "run"
    assert extract_toy(tiny_lm, out, exs, gs, shard_size=3).total == 6
    info = json.loads((out / RUN_INFO).read_text())
    assert info["generation"]["batch_tokens"] == 4 * (TYPICAL_PROMPT_TOKENS + 3)
    # another budget is another run
    with pytest.raises(StoreError, match="generation"):
        extract_toy(
            tiny_lm,
            out,
            exs,
            GenerationSettings(max_new_tokens=3, batch_size=4, batch_tokens=7),
            shard_size=3,
        )
    # a run made before the budget existed (no batch_tokens recorded) resumes
    del info["generation"]["batch_tokens"]
    (out / RUN_INFO).write_text(json.dumps(info))
    assert extract_toy(tiny_lm, out, exs, gs, shard_size=3).total == 6

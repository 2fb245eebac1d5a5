"""Tiny models shared by the tests: a random Llama with a real (in-test trained) byte-level BPE
tokenizer, toy questions, a tiny extraction and the check of a stored trace against an independent
forward pass. Imported by name (`from tiny_models import ...`); the fixtures are in conftest.py."""

from __future__ import annotations

import numpy as np
import torch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Answer the question concisely in one sentence.",
    "Question: Who was the man behind The Chipmunks? Answer: David Seville.",
    "Context: Arthur's Magazine was an American literary periodical published in Philadelphia.",
    "What star sign is Jamie Lee Curtis? Scorpio. Which city is the capital of France? Paris.",
    "The quick brown fox jumps over the lazy dog, 0123456789.",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


def make_tiny_lm(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hallugraph.models import LoadedModel, _fix_special_tokens

    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).eval()
    # a random model with std 0.02 weights has near-uniform attention; make it peakier so the
    # test would notice misplaced rows
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    model.generation_config.eos_token_id = tok.eos_token_id
    _fix_special_tokens(model, tok)
    return LoadedModel(model, tok, "tiny-llama", "in-test", True)


TOY_QUESTIONS = [
    f"{w} question number {i} about {t}?"
    for i, (w, t) in enumerate(
        [(w, t) for w in ("Who", "What", "Which", "Where") for t in ("Paris", "the fox", "Scorpio")]
        * 2
    )
]


class FakeTable:
    """The part of :class:`hallugraph.features.FeatureTable` a detector uses, over given arrays
    ``{statistic: [n, ...]}``; named outputs (``"logit.min_logprob"``) are resolved as the real
    table does."""

    def __init__(self, arrays, labels=None, groups=None) -> None:
        self.arrays = arrays
        self.labels = None if labels is None else np.asarray(labels)
        self.groups = None if groups is None else np.asarray(groups)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, idx):
        return FakeTable(
            {k: v[idx] for k, v in self.arrays.items()},
            None if self.labels is None else self.labels[idx],
            None if self.groups is None else self.groups[idx],
        )

    def stat(self, name: str):
        from hallugraph.features.registry import named_output

        return named_output(name, self.stat) if "." in name else self.arrays[name]


def table_rows(X) -> np.ndarray:
    """The row of each trace a :class:`hallugraph.features.FeatureTable` selects in its runs
    concatenated: where a test's planted ``[n, ...]`` arrays are read for that table."""
    offsets = np.cumsum([0] + [len(s) for s in X.stores])
    return offsets[X._index[:, 0]] + X._index[:, 1]


def split_train_test(n: int, seed: int = 1):
    """A fixed random split of ``range(n)``: two thirds to train on, one third to test on."""
    idx = np.random.default_rng(seed).permutation(n)
    return idx[: 2 * n // 3], idx[2 * n // 3 :]


def toy_examples(questions, prefix: str = "t"):
    """Examples with ids ``{prefix}{i}`` and no reference, one per question."""
    from hallugraph.data import Example

    return [Example(id=f"{prefix}{i}", question=q, references=()) for i, q in enumerate(questions)]


def extract_toy(lm, out, examples, settings=None, *, model="tiny", dataset="toy", **kw):
    """``run_extract`` of ``examples`` with the in-test model ``lm`` into ``out``, without a
    progress bar; ``settings`` is a :class:`hallugraph.extract.GenerationSettings` (``None``: its
    defaults) and ``kw`` go to ``run_extract`` as they are. Returns its summary."""
    from hallugraph.pipeline import run_extract

    return run_extract(
        model=model,
        dataset=dataset,
        out=out,
        lm=lm,
        progress=False,
        examples=examples,
        settings=settings,
        **kw,
    )


def reference_forward(lm, tokens):
    """An independent, unbatched, uncached fp32 forward pass over the stored tokens."""
    with torch.no_grad():
        out = lm.model(
            input_ids=torch.tensor([tokens]), output_hidden_states=True, output_attentions=True
        )
    hs = torch.stack(out.hidden_states)[:, 0].numpy()
    at = torch.stack(out.attentions)[:, 0].numpy()
    logp = torch.log_softmax(out.logits[0].float(), -1)
    return hs, at, logp


def assert_trace_matches_forward(lm, trace, rtol=2e-3, atol=2e-3):
    """A stored trace (tensors, log-probabilities, entropies, decoded tokens and answer) equals
    what :func:`reference_forward` gives over its tokens."""
    tokens = list(trace["tokens"])
    hs, at, logp = reference_forward(lm, tokens)
    assert trace["hidden_states"].shape == hs.shape
    assert trace["attentions"].shape == at.shape
    np.testing.assert_allclose(trace["hidden_states"].astype(np.float32), hs, rtol=rtol, atol=atol)
    np.testing.assert_allclose(trace["attentions"].astype(np.float32), at, rtol=rtol, atol=atol)
    plen, n = trace["prompt_len"], trace["answer_len"]
    assert plen + n == len(tokens)
    answer = tokens[plen:]
    ref_lp = logp[plen - 1 : plen - 1 + n].gather(-1, torch.tensor(answer)[:, None])[:, 0]
    np.testing.assert_allclose(trace["token_logprobs"], ref_lp.numpy(), rtol=1e-3, atol=1e-4)
    ref_ent = -(logp.exp() * logp).sum(-1)[plen - 1 : plen - 1 + n]
    np.testing.assert_allclose(trace["token_entropy"], ref_ent.numpy(), rtol=1e-3, atol=1e-4)
    tok = lm.tokenizer
    assert trace["tokens_decoded"] == [tok.decode([t]) for t in tokens]
    assert trace["generated_answer_clean"] == tok.decode(answer, skip_special_tokens=True).strip()

"""Model registry and loading, and capture on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import assert_trace_matches_forward

from hallugraph.models import (
    DEFAULT_MODEL,
    HF_NAMES,
    ModelError,
    load_model,
    model_slug,
    resolve_source,
)


def test_registry_names():
    assert HF_NAMES["llama2_chat_7B"] == "meta-llama/Llama-2-7b-chat-hf"
    assert HF_NAMES[DEFAULT_MODEL] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert any(k.startswith("qwen3") for k in HF_NAMES)
    assert any(k.startswith("qwen2.5") for k in HF_NAMES)
    assert any(k.startswith("llama3") for k in HF_NAMES)
    assert resolve_source("llama2_chat_7B") == "meta-llama/Llama-2-7b-chat-hf"
    assert resolve_source("org/some-model") == "org/some-model"
    assert model_slug("org/Some Model") == "Some_Model"
    assert model_slug("smollm2_135M") == "smollm2_135M"


def test_local_path_is_accepted(tmp_path):
    assert resolve_source(str(tmp_path)) == str(tmp_path)


def test_missing_weights_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError) as err:
        load_model("llama2_chat_7B", device="cpu")
    msg = str(err.value)
    assert "llama2_chat_7B" in msg and "meta-llama/Llama-2-7b-chat-hf" in msg
    assert "--model /path/to/checkpoint" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_quantize_needs_gpu():
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        load_model(DEFAULT_MODEL, quantize="4bit")


def test_unknown_quantization():
    with pytest.raises(ModelError, match="only '4bit'"):
        load_model(DEFAULT_MODEL, quantize="3bit")


# --- the real default model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm():
    return load_model(DEFAULT_MODEL, device="cpu")


@pytest.mark.real_model
def test_default_model_loads_offline_with_chat_template(smollm):
    cfg = smollm.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (30, 576, 9)
    assert smollm.use_chat_template
    assert smollm.tokenizer.decode([smollm.model.generation_config.eos_token_id]) == "<|im_end|>"
    assert smollm.model.config._attn_implementation == "eager"


@pytest.mark.real_model
@pytest.mark.parametrize(
    "dataset,capture", [("triviaqa", "incremental"), ("halueval_qa", "forward")]
)
def test_real_model_traces_equal_independent_forward(smollm, tmp_path, dataset, capture):
    from hallugraph.extract import GenerationSettings
    from hallugraph.pipeline import run_extract
    from hallugraph.store import TraceStore

    gs = GenerationSettings(max_new_tokens=24, batch_size=3, capture=capture)
    run_extract(
        model=DEFAULT_MODEL,
        dataset=dataset,
        out=tmp_path,
        num_samples=3,
        settings=gs,
        lm=smollm,
        progress=False,
    )
    store = TraceStore(tmp_path)
    assert len(store) == 3
    for trace in store:
        # SmolLM2's residual stream reaches |h| ~ 1e2: fp16 keeps ~3 significant digits
        assert_trace_matches_forward(smollm, trace, rtol=4e-3, atol=4e-3)
        assert trace["hidden_states"].dtype == np.float16
        if dataset == "halueval_qa":
            s, e = trace["context_span"]
            ctx = smollm.tokenizer.decode(trace["tokens"][s:e]).strip()
            assert ctx == trace["context"].strip()

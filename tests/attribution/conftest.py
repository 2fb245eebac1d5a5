"""Shared fixtures of the attribution tests: one torch thread per test (restored after), and the
tiny Llama saved to disk with a random transcoder set beside it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded (the engine and circuit-tracer agree to 1e-6 in one thread), and the
    previous setting restored for the rest of the suite."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ct(tiny_lm, tmp_path_factory):
    """``(model_dir, transcoders_dir)``: the tiny Llama saved, random transcoders (d = 32, 48
    features, layer 1 JumpReLU) in ``<cache>/tiny-tc`` — ``transcoders_dir.parent`` is a
    circuit-tracer cache dir that finds the set by its name. Tests must not modify either."""
    from hallugraph.attribution.transcoders import random_transcoder_set

    root = tmp_path_factory.mktemp("tiny_ct")
    model_dir = root / "tiny-llama"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    tdir = random_transcoder_set(
        root / "cache" / "tiny-tc", tiny_lm.num_layers, 32, 48, jumprelu_layers=(1,), scan="tiny-tc"
    )
    return model_dir, tdir

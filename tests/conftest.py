"""Shared fixtures: a tiny random Llama with a real (in-test trained) byte-level BPE tokenizer
(built by tiny_models.py) and a labeled run made from it."""

from __future__ import annotations

import pytest
from tiny_models import TOY_QUESTIONS, extract_toy, make_tiny_lm


@pytest.fixture(scope="session")
def tiny_lm():
    return make_tiny_lm()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_lm):
    """A labeled run of 24 traces from the tiny Llama (context included, labels alternate).

    Tests must not modify it (copy it first with shutil.copytree when they need to).
    """
    import json

    from hallugraph.data import Example
    from hallugraph.extract import GenerationSettings
    from hallugraph.io import atomic_write_text
    from hallugraph.store.layout import MANIFEST, read_manifest

    out = tmp_path_factory.mktemp("tiny_run")
    ctx = "Arthur's Magazine was an American literary periodical published in Philadelphia."
    exs = [
        Example(id=f"toy{i:02d}", question=q, references=("Paris",), context=ctx)
        for i, q in enumerate(TOY_QUESTIONS)
    ]
    gs = GenerationSettings(max_new_tokens=6, batch_size=8)
    extract_toy(tiny_lm, out, exs, gs, shard_size=10)
    rows = read_manifest(out)
    for i, r in enumerate(rows):
        r["label"] = i % 2
    atomic_write_text(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))
    return out

"""A teacher-forced, labeled run of the tiny Llama, with the model saved to disk (so that the
CLI and the server can load it by path), and a trained Lookback Lens bundle."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

CONTEXT = "Arthur's Magazine was an American literary periodical published in Philadelphia."


def toy_examples():
    from tiny_models import TOY_QUESTIONS

    from hallugraph.data import Example

    out = []
    for i, q in enumerate(TOY_QUESTIONS):
        label = i % 2
        answer = "Paris." if label == 0 else f"The fox of Scorpio {i}, {i * 7} times."
        out.append(
            Example(
                id=f"tf{i:02d}",
                question=q,
                references=("Paris",),
                context=CONTEXT,
                answer=answer,
                meta={"given_label": label},
            )
        )
    return out


@pytest.fixture(scope="session")
def scoring_env(tmp_path_factory, tiny_lm):
    from hallugraph.extract import GenerationSettings
    from hallugraph.labels import label_run
    from hallugraph.pipeline import run_extract
    from hallugraph.scoring import Scorer

    root = tmp_path_factory.mktemp("scoring")
    model_dir = root / "model"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    run = root / "run"
    examples = toy_examples()
    run_extract(
        model=str(model_dir),
        dataset="toy_tf",
        out=run,
        lm=tiny_lm,
        examples=examples,
        progress=False,
        settings=GenerationSettings(batch_size=1, max_new_tokens=6),
    )
    label_run(run, spot_check=0)
    bundle = root / "lookback"
    Scorer.train("lookback_lens", [run], lm=tiny_lm).save(bundle)
    records = root / "in.jsonl"
    records.write_text(
        "".join(
            json.dumps(
                {"id": e.id, "question": e.question, "answer": e.answer, "context": e.context}
            )
            + "\n"
            for e in examples[:3]
        )
    )
    return SimpleNamespace(
        root=root, model_dir=model_dir, run=run, examples=examples, bundle=bundle, records=records
    )

"""Transcoder training on the tiny Llama: FVU decreases, files load in circuit-tracer, resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hallugraph.attribution.transcoders import (
    CHECKPOINT,
    TrainConfig,
    Transcoder,
    corpus_texts,
    evaluate_transcoders,
    format_report,
    layer_activations,
    train_transcoders,
)

TEXTS = [
    f"<|im_start|>user\n{w} question number {i} about {t}?<|im_end|>\n<|im_start|>assistant\n{a}"
    for i, (w, t, a) in enumerate(
        [
            (w, t, a)
            for w in ("Who", "What", "Which", "Where")
            for t, a in (("Paris", "France."), ("the fox", "A dog."), ("Scorpio", "A sign."))
        ]
        * 2
    )
]
CFG = TrainConfig(width=48, batch_texts=4, max_len=40, checkpoint_every=2, eval_texts=6, lr=3e-3)


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded, and the previous setting restored for the rest of the suite."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _files(out):
    return {p.name: load_file(str(p)) for p in sorted(out.glob("layer_*.safetensors"))}


def test_layer_activations_are_mlp_input_and_output(tiny_lm):
    ids = [tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:3]]
    ins, outs = layer_activations(tiny_lm, ids)
    assert len(ins) == len(outs) == tiny_lm.num_layers
    n = sum(len(s) - 1 for s in ids)  # every non-pad position but the first
    assert ins[0].shape == (n, 32) and outs[1].shape == (n, 32)
    # layer 1's MLP output on sequence 0 equals the model's own MLP applied to its input
    mlp = tiny_lm.model.model.layers[1].mlp
    with torch.no_grad():
        torch.testing.assert_close(mlp(ins[1]), outs[1], atol=1e-5, rtol=1e-4)


def test_train_fvu_decreases_and_resume_continues(tiny_lm, tmp_path):
    out = tmp_path / "tc"
    first = train_transcoders(tiny_lm, TEXTS, out, CFG, tokens=1, progress=False)
    assert first.steps == 1 and first.stopped == "tokens"
    assert (out / CHECKPOINT).is_file() and (out / "config.yaml").is_file()
    fvu_1 = sum(r["fvu"] for r in first.report)
    # continue into the same folder with a larger budget: it resumes from step 1
    second = train_transcoders(tiny_lm, TEXTS, out, CFG, tokens=first.tokens * 25, progress=False)
    assert second.steps > first.steps and second.history[0]["step"] == 1
    assert [h["step"] for h in second.history] == list(range(1, second.steps + 1))
    assert sum(r["fvu"] for r in second.report) < fvu_1
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == second.steps and len(report["layers"]) == tiny_lm.num_layers
    assert {"fvu", "l0", "dead"} <= set(report["layers"][0])
    assert "FVU" in format_report(second.report)
    # the same budget in one uninterrupted run gives the same transcoders (data order, Adam)
    straight = train_transcoders(
        tiny_lm, TEXTS, tmp_path / "straight", CFG, tokens=first.tokens * 25, progress=False
    )
    assert straight.steps == second.steps
    a, b = _files(out), _files(tmp_path / "straight")
    assert a.keys() == b.keys() == {"layer_0.safetensors", "layer_1.safetensors"}
    for name in a:
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], atol=1e-6, rtol=1e-5)
    # nothing left to do: same steps, files rewritten
    again = train_transcoders(tiny_lm, TEXTS, out, CFG, tokens=first.tokens, progress=False)
    assert again.steps == second.steps
    # another configuration must not silently continue this checkpoint
    with pytest.raises(ValueError, match="different configuration"):
        train_transcoders(
            tiny_lm, TEXTS, out, TrainConfig(width=16, eval_texts=6), tokens=10**6, progress=False
        )


def test_time_budget_and_jumprelu(tiny_lm, tmp_path):
    cfg = TrainConfig(
        width=32, activation="jumprelu", sparsity=1e-3, batch_texts=4, max_len=40, eval_texts=6
    )
    r = train_transcoders(
        tiny_lm, TEXTS, tmp_path / "j", cfg, tokens=10**6, time_budget=0.0, progress=False
    )
    assert r.stopped == "time" and r.steps == 0
    r = train_transcoders(tiny_lm, TEXTS, tmp_path / "j", cfg, tokens=200, progress=False)
    assert r.steps >= 1
    t = load_file(str(tmp_path / "j" / "layer_0.safetensors"))
    assert t["activation_function.threshold"].shape == (32,)
    assert t["W_enc"].shape == t["W_dec"].shape == (32, 32)
    assert t["b_enc"].shape == (32,) and t["b_dec"].shape == (32,)


def test_export_matches_normalized_module(tiny_lm):
    torch.manual_seed(0)
    tc = Transcoder(32, 16, "jumprelu", init_threshold=0.05)
    tc.in_scale.fill_(3.0)
    tc.out_scale.fill_(0.5)
    x = torch.randn(10, 32) * 3
    rec, a, _ = tc(x / tc.in_scale)
    rows_mod = evaluate_transcoders(tiny_lm, [tc, tc], TEXTS[:4])
    rows_exp = evaluate_transcoders(tiny_lm, [tc.export(), tc.export()], TEXTS[:4])
    for r1, r2 in zip(rows_mod, rows_exp, strict=True):
        assert r1["fvu"] == pytest.approx(r2["fvu"], rel=1e-5)
        assert r1["l0"] == pytest.approx(r2["l0"])
    e = tc.export()
    z = x @ e["W_enc"].T + e["b_enc"]
    out = (z * (z > e["activation_function.threshold"])) @ e["W_dec"] + e["b_dec"]
    torch.testing.assert_close(out, rec * 0.5, atol=1e-5, rtol=1e-4)


def test_files_load_through_circuit_tracer(tiny_lm, tmp_path):
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    out = tmp_path / "tcset"
    train_transcoders(tiny_lm, TEXTS, out, CFG, tokens=100, progress=False)
    tset, config = load_transcoders_from_cache(
        "tcset", cache_dir=tmp_path, device=torch.device("cpu"), lazy_decoder=False
    )
    assert config["model_kind"] == "transcoder_set"
    assert config["feature_input_hook"] == "mlp.hook_in"
    assert len(tset) == tiny_lm.num_layers
    ids = [tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:2]]
    ins, outs = layer_activations(tiny_lm, ids)
    for i in range(tiny_lm.num_layers):
        files = load_file(str(out / f"layer_{i}.safetensors"))
        z = ins[i] @ files["W_enc"].T + files["b_enc"]
        ours = torch.relu(z) @ files["W_dec"] + files["b_dec"]
        torch.testing.assert_close(tset[i](ins[i]), ours, atol=1e-5, rtol=1e-4)


def test_corpus_texts_outside_benchmark(tiny_lm):
    from hallugraph.config import data_dir
    from hallugraph.evaluate import split_groups

    if not (data_dir() / "triviaqa").is_dir() or not (data_dir() / "halueval_qa").is_dir():
        pytest.skip("shared benchmark data not available")
    from hallugraph.attribution.transcoders import halueval_train_questions
    from hallugraph.datasets import load_halueval_qa_teacher_forced, load_triviaqa

    texts = corpus_texts(tiny_lm, ("triviaqa",), max_per_source=3)
    tqa = load_triviaqa()
    assert len(texts) == 3 and tqa[2000].question in texts[0]
    assert all(ex.question not in texts[0] for ex in tqa[:1000])
    assert texts[0].startswith("<|im_start|>user") and texts[0].endswith("<|im_end|>")
    hal = halueval_train_questions()
    tf = load_halueval_qa_teacher_forced()
    groups = [ex.meta["group"] for ex in tf]
    _, val, test = split_groups(groups, labels=[ex.meta["given_label"] for ex in tf])
    held = {groups[i] for i in [*val, *test]}
    assert 250 <= len(hal) <= 350 and not {ex.id for ex in hal} & held


def test_cli_transcoders_train(tiny_lm, tmp_path, capsys):
    from hallugraph.cli import main
    from hallugraph.config import data_dir

    if not (data_dir() / "triviaqa").is_dir():
        pytest.skip("shared benchmark data not available")
    model_dir = tmp_path / "tiny"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    argv = ["transcoders", "train", "--model", str(model_dir), "--device", "cpu"]
    argv += ["--out", str(tmp_path / "tc"), "--tokens", "300", "--width", "16", "--sources"]
    argv += ["triviaqa", "--max-texts-per-source", "24", "--eval-texts", "4", "--batch-texts"]
    argv += ["4", "--max-len", "48", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "FVU" in printed and '"stopped": "tokens"' in printed
    assert (tmp_path / "tc" / "layer_1.safetensors").is_file()
    assert json.loads((tmp_path / "tc" / "training.json").read_text())["config"]["width"] == 16

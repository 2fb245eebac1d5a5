"""Skip transcoders on the tiny Llama: closed-form skip, gradients, export through
circuit-tracer's loaders, resume, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hallugraph.attribution.transcoders import (
    SkipFit,
    SkipTranscoder,
    TrainConfig,
    evaluate_set,
    exported_forward,
    fit_skip,
    format_table,
    load_set,
    random_transcoder_set,
    train,
    write_transcoder_set,
)
from hallugraph.attribution.transcoders.corpus import BatchPlan, Corpus
from hallugraph.attribution.transcoders.train import capture

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
CFG = TrainConfig(
    width=64,
    k=4,
    lr=3e-3,
    warmup_steps=2,
    batch_tokens=96,
    window=32,
    skip_tokens=150,
    dead_tokens=200,
    k_aux=8,
    checkpoint_every=2,
)


def _corpus(tok) -> Corpus:
    seqs = [tok(t, add_special_tokens=False)["input_ids"][:32] for t in TEXTS]
    starts = np.zeros(len(seqs) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(s) for s in seqs])
    ids = np.array([t for s in seqs for t in s], dtype=np.int32)
    pool = np.array([i % 2 for i in range(len(seqs))], dtype=np.int8)
    return Corpus(ids, starts, pool, {})


def test_capture_is_mlp_input_and_output(tiny_lm):
    ids = [np.array(tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:3]]
    ins, outs = capture(tiny_lm.model, ids, tiny_lm.tokenizer.pad_token_id)
    n = sum(len(s) - 1 for s in ids)  # every non-pad position but the first
    assert len(ins) == tiny_lm.num_layers and ins[0].shape == (n, 32)
    mlp = tiny_lm.model.model.layers[1].mlp
    with torch.no_grad():
        torch.testing.assert_close(mlp(ins[1]), outs[1], atol=1e-5, rtol=1e-4)


def test_closed_form_skip_equals_lstsq():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(700, 12, generator=g) * torch.linspace(0.1, 3, 12) + 0.5
    y = x @ torch.randn(12, 9, generator=g) + torch.randn(700, 9, generator=g) * 0.3 + 1.0
    xa = np.concatenate([x.double().numpy(), np.ones((700, 1))], 1)
    sol, *_ = np.linalg.lstsq(xa, y.double().numpy(), rcond=None)  # QR/SVD, not normal eqs
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        fit = SkipFit(12, 9, product_dtype=dtype)
        for b in range(0, 700, 128):  # batches of uneven size
            fit.update(x[b : b + 128], y[b : b + 128])
        w, b = fit.solve(ridge=0.0)
        np.testing.assert_allclose(w.numpy(), sol[:12].T, atol=tol)
        np.testing.assert_allclose(b.numpy(), sol[12], atol=tol)
    # the ridge shrinks the weights
    w_r, _ = fit.solve(ridge=10.0)
    assert float(w_r.norm()) < float(w.norm())
    # SSE from the sums equals the direct one
    pred = x.double() @ w.T + b
    assert fit.sse(w, b) == pytest.approx(float((pred - y.double()).pow(2).sum()), rel=1e-4)


def test_fit_skip_picks_the_ridge_that_generalizes():
    g = torch.Generator().manual_seed(1)
    # a nearly constant input direction that the training targets happen to follow
    x = torch.randn(400, 6, generator=g)
    x[:, 5] = 1.0 + 1e-4 * torch.randn(400, generator=g)
    y = x[:, :2] @ torch.ones(2, 3) + 1e3 * (x[:, 5:6] - 1.0)
    train_fit, val_fit = SkipFit(6, 3, torch.float64), SkipFit(6, 3, torch.float64)
    train_fit.update(x, y)
    xv = torch.randn(200, 6, generator=g)
    xv[:, 5] = 1.0 + 1e-2 * torch.randn(200, generator=g)  # shifted: the direction varies more
    val_fit.update(xv, xv[:, :2] @ torch.ones(2, 3))
    w, b, ridge = fit_skip(train_fit, val_fit)
    assert ridge > 1e-6
    w0, b0 = train_fit.solve(1e-6)
    assert val_fit.sse(*train_fit.solve(ridge)) < val_fit.sse(w0, b0)


def test_sparse_gradients_equal_autograd():
    torch.manual_seed(0)
    tc = SkipTranscoder(16, 64, 4, seed=1)
    x, r = torch.randn(50, 16), torch.randn(50, 16)
    tc.init_scales(x, r)
    gen = torch.Generator().manual_seed(0)
    stats = tc.train_step(x, r, gen=gen, tokens_seen=0, dead_tokens=10**9, k_aux=0, aux_coef=0.0)
    assert 3.0 <= stats["l0"] <= 5.0  # BatchTopK keeps about k per token
    # the same computation with autograd, on the same selected entries
    xn, rn = x / float(tc.in_scale), r / float(tc.res_scale)
    z_sel = tc._encode(xn)
    t = tc.batch_threshold(z_sel, torch.Generator().manual_seed(0), 262144)
    mask = (z_sel > t).float()
    w_enc = tc.W_enc.detach().clone().requires_grad_()
    b_enc = tc.b_enc.detach().clone().requires_grad_()
    w_dec = tc.W_dec.detach().clone().requires_grad_()
    b_dec = tc.b_dec.detach().clone().requires_grad_()
    z = (xn.bfloat16() @ w_enc.bfloat16().T + b_enc.bfloat16()).float()
    loss = ((z * mask) @ w_dec + b_dec - rn).pow(2).sum() / rn.numel()
    loss.backward()
    g_dec = w_dec.grad - (w_dec.grad * w_dec).sum(1, keepdim=True) * w_dec
    torch.testing.assert_close(tc.W_dec.grad, g_dec, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(tc.b_dec.grad, b_dec.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(tc.W_enc.grad, w_enc.grad, atol=2e-3, rtol=2e-2)  # bf16 z
    torch.testing.assert_close(tc.b_enc.grad, b_enc.grad, atol=2e-3, rtol=2e-2)


def test_aux_loss_reaches_dead_features_only():
    torch.manual_seed(0)
    tc = SkipTranscoder(16, 64, 2, seed=1)
    x, r = torch.randn(40, 16), torch.randn(40, 16)
    tc.init_scales(x, r)
    gen = torch.Generator().manual_seed(0)
    tc.train_step(x, r, gen=gen, tokens_seen=0, dead_tokens=10**9, k_aux=0, aux_coef=0.0)
    alive = tc.W_dec.grad.abs().sum(1) > 0
    tc.last_active[:] = 0
    tc.last_active[alive] = 10**6  # the features active now are "recent", the rest dead
    gen.manual_seed(0)
    s = tc.train_step(x, r, gen=gen, tokens_seen=10**6, dead_tokens=100, k_aux=8, aux_coef=1.0)
    assert s["aux"] > 0 and s["dead"] > 0
    touched = tc.W_dec.grad.abs().sum(1) > 0
    assert (touched & ~alive).any()  # dead features got a gradient from the aux loss


def _set_layers(n_layers: int, d: int, width: int) -> list[SkipTranscoder]:
    torch.manual_seed(0)
    layers = []
    for i in range(n_layers):
        tc = SkipTranscoder(d, width, 4, seed=i)
        tc.set_skip(torch.randn(d, d, dtype=torch.float64) * 0.1, torch.randn(d).double())
        tc.in_scale.fill_(2.0)
        tc.res_scale.fill_(0.5)
        tc.threshold.fill_(0.3)
        with torch.no_grad():
            tc.b_enc.normal_()
            tc.b_dec.normal_()
        layers.append(tc)
    return layers


def test_exported_files_load_through_circuit_tracer(tiny_lm, tmp_path):
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    tcs = _set_layers(tiny_lm.num_layers, 32, 48)
    out = write_transcoder_set(tmp_path / "tcset", [tc.export() for tc in tcs])
    tset, config = load_transcoders_from_cache(
        "tcset", cache_dir=tmp_path, device=torch.device("cpu"), lazy_decoder=False
    )
    assert config["model_kind"] == "transcoder_set" and len(tset) == tiny_lm.num_layers
    assert tset.skip_connection
    ids = [np.array(tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    ins, _ = capture(tiny_lm.model, ids[:3], tiny_lm.tokenizer.pad_token_id)
    for i, tc in enumerate(tcs):
        x = ins[i]
        # the trainer's own reconstruction: normalized code, scales, skip, threshold
        xn = x / float(tc.in_scale)
        z = xn @ tc.W_enc.T + tc.b_enc
        a = z * (z > float(tc.threshold))
        ours = (a @ tc.W_dec + tc.b_dec) * float(tc.res_scale) + tc.skip(x)
        theirs = tset[i](x)  # circuit-tracer: JumpReLU(thresholds) + W_skip
        torch.testing.assert_close(theirs, ours.detach(), atol=1e-4, rtol=1e-4)
        rec, _ = exported_forward(load_set(out)[i], x)
        torch.testing.assert_close(rec, ours.detach(), atol=1e-4, rtol=1e-4)
        assert load_file(str(out / f"layer_{i}.safetensors"))["W_skip"].shape == (32, 32)


def test_train_resume_equals_uninterrupted(tiny_lm, tmp_path):
    corpus = _corpus(tiny_lm.tokenizer)
    # cut after the skip phase + 2 sparse steps (a checkpoint), then resume to the budget
    a = tmp_path / "a"
    _, st1, why = train(tiny_lm, corpus, a, CFG, tokens=1, progress=False)
    assert why == "tokens" and st1.phase == "sparse" and st1.step == 1
    tcs_a, st_a, _ = train(tiny_lm, corpus, a, CFG, tokens=600, progress=False)
    assert st_a.step > st1.step and st_a.history[0]["step"] == 1
    assert [h["step"] for h in st_a.history] == list(range(1, st_a.step + 1))
    tcs_b, st_b, _ = train(tiny_lm, corpus, tmp_path / "b", CFG, tokens=600, progress=False)
    assert st_b.step == st_a.step and st_b.tokens == st_a.tokens
    for ta, tb in zip(tcs_a, tcs_b, strict=True):
        for (k, va), vb in zip(ta.state_dict().items(), tb.state_dict().values(), strict=True):
            torch.testing.assert_close(va, vb, atol=1e-6, rtol=1e-5, msg=k)
    # training lowers the error: later batches' FVU below the first's
    fvu = [h["fvu"] for h in st_b.history]
    assert np.mean(fvu[-3:]) < fvu[0]
    # a time budget of 0 stops at once, keeping the checkpoint
    _, st_c, why = train(tiny_lm, corpus, a, CFG, tokens=10**6, time_budget=0.0, progress=False)
    assert why == "time" and st_c.step == st_a.step
    # other settings must not silently continue this checkpoint
    with pytest.raises(ValueError, match="other settings"):
        train(
            tiny_lm,
            corpus,
            a,
            TrainConfig(**{**CFG.to_dict(), "k": 8}),
            tokens=10**6,
            progress=False,
        )


def test_interrupted_skip_phase_resumes(tiny_lm, tmp_path):
    corpus = _corpus(tiny_lm.tokenizer)
    cfg = TrainConfig(**{**CFG.to_dict(), "checkpoint_every": 1, "skip_tokens": 200})
    _, st, why = train(
        tiny_lm, corpus, tmp_path / "s", cfg, tokens=1, time_budget=1e-9, progress=False
    )
    assert why == "time" and st.phase == "skip"
    tcs, st2, _ = train(tiny_lm, corpus, tmp_path / "s", cfg, tokens=1, progress=False)
    tcs_ref, _, _ = train(tiny_lm, corpus, tmp_path / "r", cfg, tokens=1, progress=False)
    assert st2.phase == "sparse"
    torch.testing.assert_close(tcs[0].W_skip, tcs_ref[0].W_skip)


def test_batch_plan_deterministic_and_mixed(tiny_lm):
    corpus = _corpus(tiny_lm.tokenizer)
    p1, p2 = BatchPlan(corpus, 96, 0.3, seed=0), BatchPlan(corpus, 96, 0.3, seed=0)
    pools = []
    for i in range(40):
        b = p1.batch(i)
        assert np.array_equal(b, p2.batch(i))
        assert corpus.lengths()[b].max() * len(b) <= 96
        pools.append(int(corpus.pool[b[0]]))
        assert (corpus.pool[b] == corpus.pool[b[0]]).all()
    assert pools.count(0) == 12  # 3 of every 10 batches from the prompt pool


def test_evaluate_and_table(tiny_lm, tmp_path):
    tcs = _set_layers(tiny_lm.num_layers, 32, 48)
    layers = [tc.export() for tc in tcs]
    tables = evaluate_set(
        tiny_lm,
        layers,
        {"a": TEXTS[:4], "b": TEXTS[4:8]},
        progress=False,
        skip_bias=[tc.b_skip.float() for tc in tcs],
    )
    assert set(tables) == {"a", "b", "all"}
    row = tables["all"][0]
    assert row["tokens"] == tables["a"][0]["tokens"] + tables["b"][0]["tokens"]
    assert row["fvu"] > 0 and 0 <= row["dead_frac"] <= 1 and row["l0"] >= 0
    # the table's FVU equals a direct computation on the exported form
    ids = [np.array(tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:4]]
    ins, outs = capture(tiny_lm.model, ids, tiny_lm.tokenizer.pad_token_id)
    rec, a = exported_forward(layers[1], ins[1])
    y = outs[1].double()
    fvu = float((rec.double() - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert tables["a"][1]["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert tables["a"][1]["l0"] == pytest.approx(float((a > 0).sum(1).float().mean()), rel=1e-5)
    assert "FVU" in format_table(tables)


def test_random_set_unchanged(tmp_path):
    out = random_transcoder_set(tmp_path / "r", 2, 8, 16, jumprelu_layers=(1,))
    t0, t1 = load_set(out)
    assert set(t0) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    assert t1["activation_function.threshold"].shape == (16,)
    assert (out / "config.yaml").read_text().startswith("model_kind: transcoder_set")


def test_cli_train_and_eval(tiny_lm, tmp_path, capsys, monkeypatch):
    from hallugraph.attribution.transcoders import cli as tcli
    from hallugraph.cli import main

    corpus = _corpus(tiny_lm.tokenizer)
    model_dir = tmp_path / "tiny"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    import hallugraph.attribution.transcoders.run as run_mod

    monkeypatch.setattr(run_mod, "build_corpus", lambda lm, **kw: corpus)
    monkeypatch.setattr(
        run_mod,
        "eval_texts",
        lambda lm, data_dir=None, n=None, **kw: {"x": TEXTS[:3], "y": TEXTS[3:6]},
    )
    out = tmp_path / "tc"
    argv = ["transcoders", "train", "--model", str(model_dir), "--out", str(out)]
    argv += ["--tokens", "300", "--width", "48", "--k", "4", "--batch-tokens", "96"]
    argv += ["--window", "32", "--skip-tokens", "100", "--no-progress", "--export-l0", "2"]
    import hallugraph.attribution.transcoders.corpus as corpus_mod

    monkeypatch.setattr(corpus_mod, "calibration_texts", lambda lm, d=None, n=None: TEXTS[6:12])
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "FVU" in printed and '"exported": true' in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["width"] == 48 and manifest["tokens"] >= 300
    # export calibrated to L0 2 on the calibration texts
    cal = manifest["calibration"]
    assert cal["target_l0"] == 2.0 and cal["l0_mean"] <= 2.0 < cal["l0_before_mean"]
    assert set(manifest["eval"]["tables"]) == {"x", "y", "all"}
    assert (out / "layer_1.safetensors").is_file() and (out / "skip.safetensors").is_file()
    assert (
        main(
            [
                "transcoders",
                "eval",
                str(out),
                "--model",
                str(model_dir),
                "--no-progress",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["tables"]["x"][0]["layer"] == 0
    assert main(["transcoders", "eval", str(tmp_path)]) == 2
    assert tcli._FLAGS  # every flag maps to a TrainConfig field
    assert set(tcli._FLAGS) <= set(TrainConfig().to_dict())


def test_data_init_and_resampling_revive_features():
    torch.manual_seed(0)
    d, width = 16, 64
    x = torch.randn(200, d) + 2.0
    r = x[:, :8].repeat(1, 2) * 0.5  # a residual the features can explain
    tc = SkipTranscoder(d, width, 4, seed=0)
    tc.init_scales(x, r)
    gen = torch.Generator().manual_seed(0)
    tc.init_from_data(x, r, gen, enc_scale=0.1)
    rows = tc.W_dec.detach()
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(width))
    # each decoder row is the direction of one token's residual
    rn = r / r.norm(dim=1, keepdim=True)
    assert float((rows @ rn.T).max(dim=1).values.min()) > 0.999
    assert len({tuple(v.tolist()) for v in rows.round(decimals=5)}) == width  # all distinct
    # every feature dead: resampling re-initializes them all and resets Adam's moments
    opt = torch.optim.Adam(tc.parameters(), lr=1e-3)
    tc.threshold.fill_(0.5)
    s = tc.train_step(x, r, gen=gen, tokens_seen=0, dead_tokens=10**9, k_aux=0, aux_coef=0.0)
    opt.step()
    tc.after_step()
    tc.last_active.zero_()
    th = float(tc.threshold)  # the running threshold after this step
    n = tc.resample_dead(x, r, tokens_seen=1000, dead_tokens=10, gen=gen, opt=opt, init="token")
    assert n == width and int(tc.last_active.min()) == 1000
    assert float(opt.state[tc.W_enc]["exp_avg"].abs().sum()) == 0.0
    # "token" (v2): a resampled feature fires at 1.5 × the threshold on the token it was drawn from
    z = (x / float(tc.in_scale)) @ tc.W_enc.detach().T + tc.b_enc.detach()
    assert float(z.max(dim=0).values.min()) >= 1.5 * th - 1e-4
    assert s["l0"] > 0


def _planted(g: torch.Generator, n: int, d: int = 32, m: int = 256):
    """Tokens made of 3 of ``m`` atoms: a residual a sparse code explains."""
    a_in = torch.randn(m, d, generator=torch.Generator().manual_seed(1))
    a_out = torch.randn(m, d, generator=torch.Generator().manual_seed(2))
    idx = torch.randint(0, m, (n, 3), generator=g)
    c = torch.rand(n, 3, generator=g) + 0.5
    x = (a_in[idx] * c[..., None]).sum(1) + 0.1 * torch.randn(n, d, generator=g)
    return x, (a_out[idx] * c[..., None]).sum(1)


def _revived(init: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Train, kill a quarter of the features (b_enc = -100), resample them with ``init``, train
    60 more steps: the share of them active in the last 20."""
    g = torch.Generator().manual_seed(0)
    width = 128
    tc = SkipTranscoder(32, width, 4, seed=0)
    x, r = _planted(g, 512)
    tc.init_scales(x, r)
    tc.init_from_data(x, r, torch.Generator().manual_seed(0), 0.1)
    opt = torch.optim.Adam(tc.parameters(), lr=3e-3)
    seen = 0

    def step(x, r):
        nonlocal seen
        tc.train_step(x, r, gen=g, tokens_seen=seen, dead_tokens=10**9, k_aux=0, aux_coef=0.0)
        opt.step()
        tc.after_step()
        seen += x.shape[0]

    for _ in range(40):
        step(*_planted(g, 256))
    dead = torch.arange(0, width, 4)
    with torch.no_grad():
        tc.b_enc[dead] = -100.0
    tc.invalidate()
    tc.last_active.fill_(seen)
    tc.last_active[dead] = 0
    x, r = _planted(g, 256)
    assert (
        tc.resample_dead(x, r, tokens_seen=seen, dead_tokens=100, gen=g, opt=opt, init=init) == 32
    )
    second = opt.state[tc.W_enc]["exp_avg_sq"].clone()  # right after the resampling
    fired = torch.zeros(width, dtype=torch.bool)
    for i in range(60):
        before = tc.last_active.clone()
        step(*_planted(g, 256))
        if i >= 40:
            fired |= tc.last_active > before
    return float(fired[dead].float().mean()), second, dead


def test_resampling_revives_planted_dead_features():
    """The calibrated resampling brings every planted dead feature back for good; v2's
    ("token": a feature that fires on its own token only, Adam's moments zeroed) loses some
    again within 60 steps."""
    calibrated, v, dead = _revived("calibrated")
    token, v_token, _ = _revived("token")
    assert calibrated == 1.0 and token < calibrated
    # the resampled rows took the live rows' median second moments (normal-sized steps)
    live = torch.ones(v.shape[0], dtype=torch.bool)
    live[dead] = False
    torch.testing.assert_close(v[dead], v[live].median(0).values.expand(len(dead), -1))
    assert float(v_token[dead].abs().max()) == 0.0


def test_training_text_outside_benchmark_and_eval(tiny_lm):
    from hallugraph.attribution.transcoders.corpus import (
        TRIVIAQA_START,
        eval_texts,
        halueval_train_questions,
        prompt_texts,
    )
    from hallugraph.config import data_dir

    if not (data_dir() / "triviaqa").is_dir() or not (data_dir() / "halueval_qa").is_dir():
        pytest.skip("shared benchmark data not available")
    from hallugraph.data import load_triviaqa

    train = prompt_texts(tiny_lm)
    tqa = load_triviaqa()
    assert tqa[TRIVIAQA_START].question in train[0] and len(train) > len(tqa) - TRIVIAQA_START
    assert train[0].startswith("<|im_start|>user") and train[0].endswith("<|im_end|>")
    held = eval_texts(tiny_lm, max_per_set=500)
    assert not set(train) & set(held["halueval_qa"]) and not set(train) & set(held["triviaqa"])
    train_q = {ex.question for ex in halueval_train_questions()}
    assert not any(q in t for q in train_q for t in held["halueval_qa"][:40])
    joined = "\n".join(train)
    assert not any(ex.question in joined for ex in tqa[:50])  # benchmark questions unseen


def test_general_text_missing_names_the_package(monkeypatch, tmp_path):
    from hallugraph.attribution.transcoders import corpus

    monkeypatch.setitem(corpus.GENERAL_SOURCES, "gcide", (str(tmp_path / "no"), "dict-gcide", "x"))
    with pytest.raises(FileNotFoundError, match="apt-get install dict-gcide"):
        corpus.general_documents(("gcide",))
    with pytest.raises(ValueError, match="unknown text source"):
        corpus.general_documents(("wikipedia",))


def test_capture_leaves_out_position_zero_and_padding(tiny_lm):
    """Rows of a padded batch are exactly positions 1.. of each sequence run alone: position 0
    (the attention sink, huge MLP output on real models) and padding never reach the skip fit,
    the training loss or the evaluation."""
    tok, pad = tiny_lm.tokenizer, tiny_lm.tokenizer.pad_token_id
    ids = [np.array(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:4]]
    ids[1] = ids[1][:5]  # unequal lengths: padding in the batch
    ins, outs = capture(tiny_lm.model, ids, pad)
    alone = [capture(tiny_lm.model, [s], pad) for s in ids]
    for layer in (0, tiny_lm.num_layers - 1):
        torch.testing.assert_close(ins[layer], torch.cat([a[0][layer] for a in alone]))
        torch.testing.assert_close(outs[layer], torch.cat([a[1][layer] for a in alone]))
    # the kept rows are positions 1.. of the full forward: position 0 is the one left out
    full: list[torch.Tensor] = []
    mlp = tiny_lm.model.model.layers[0].mlp
    handle = mlp.register_forward_hook(lambda m, a, o: full.append(o[0].float()))
    try:
        with torch.no_grad():
            tiny_lm.model.model(input_ids=torch.as_tensor(ids[0][None]), use_cache=False)
    finally:
        handle.remove()
    assert full[0].shape[0] == len(ids[0])
    torch.testing.assert_close(alone[0][1][0], full[0][1:])


def test_skip_fitted_on_prompt_pool_only(tiny_lm, tmp_path, monkeypatch):
    import importlib

    train_mod = importlib.import_module("hallugraph.attribution.transcoders.train")

    corpus = _corpus(tiny_lm.tokenizer)
    seen: list[list[np.ndarray]] = []
    real = train_mod.capture
    monkeypatch.setattr(
        train_mod, "capture", lambda m, ids, pad: seen.append(ids) or real(m, ids, pad)
    )
    cfg = TrainConfig(**{**CFG.to_dict(), "skip_pool": "prompts", "prompt_share": 0.1})
    tcs, st, _ = train(tiny_lm, corpus, tmp_path / "p", cfg, tokens=1, progress=False)
    assert st.phase == "sparse" and st.step == 1
    prompt_seqs = {tuple(corpus.seq(i)) for i in np.nonzero(corpus.pool == 0)[0]}
    skip_calls = seen[:-1]  # the last call is the one sparse step
    assert skip_calls and all(tuple(s) in prompt_seqs for ids in skip_calls for s in ids)
    # the result differs from a skip fitted on both pools
    tcs_all, _, _ = train(
        tiny_lm,
        corpus,
        tmp_path / "a",
        TrainConfig(**{**cfg.to_dict(), "skip_pool": "all"}),
        tokens=1,
        progress=False,
    )
    assert not torch.allclose(tcs[1].W_skip, tcs_all[1].W_skip)
    with pytest.raises(ValueError, match="skip_pool"):
        TrainConfig(skip_pool="general")


def test_lr_schedule_warmup_and_decay():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, decay_frac=0.4)
    assert cfg.lr_at(0, 0.0) == pytest.approx(1e-4)
    assert cfg.lr_at(50, 0.5) == pytest.approx(1e-3)
    assert cfg.lr_at(60, 0.8) == pytest.approx(1e-3 * 0.55)
    assert cfg.lr_at(90, 1.5) == pytest.approx(1e-4)
    assert TrainConfig(lr=1e-3, warmup_steps=1).lr_at(10**6, 0.99) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="decay_frac"):
        TrainConfig(decay_frac=1.0)

"""The report of ``hallugraph groundedness-eval``: ``groundedness_scores.csv``,
``groundedness.json`` and the PNGs, from the scored runs and the plan (:mod:`.benchmark`).

**Evaluation set**: the teacher-forced run's test answers in the length-matched set (balanced
by construction). **Chosen on validation only**: α and T (:func:`fit_groundedness` on the
validation side's length-matched answers); the node budget and target mode come from the
sweep, also validation only. **Fitted on train only**: ``groundedness_lr``, Lookback Lens, the
best detector of the main table (``graph_topology``) - all train-side answers of the run.
Single scores (Gctx, RS, CS) are read in their fixed direction (low = hallucinated), never
oriented on test. ``answer_length`` is the control: ~0.5 means length no longer separates the
classes. CIs: 95 % percentile intervals over ``bootstrap`` question-level resamples.
The generated run (``halueval_qa``) is reported the same way, α and T taken from the
teacher-forced validation side, its supervised detectors fitted on its own train side.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.attribution.lengthmatch import group_bootstrap, with_ci
from hallugraph.io import atomic_write_json, atomic_write_text

CSV_COLUMNS = (
    "id",
    "question_id",
    "split",
    "label",
    "answer_tokens",
    "length_matched",
    "gctx",
    "rs",
    "cs",
    "groundedness",
    "lookback",
)
REPORT_T = 0.4
"""The report's threshold: hallucinated when Groundedness < 0.4."""
BASELINES = ("lookback_lens", "graph_topology", "answer_length")
RUNS = ("halueval_qa_tf", "halueval_qa")
ALPHA_RUN = RUNS[0]
"""The run whose length-matched validation answers choose α and T (and the sweep's)."""


def resolve_set(name: str) -> str:
    """A transcoder set given as a folder, or as a set name under the cache of SmolLM2-135M."""
    p = Path(name).expanduser()
    if p.is_dir() or "/" in name:
        return str(p)
    from hallugraph.config import cache_dir

    return str(cache_dir() / "transcoders" / "smollm2_135M" / name)


def answer_table(run: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Per trace of a labeled run: id, question (group), label, answer tokens."""
    from hallugraph.store import TraceStore

    rows = TraceStore(run).manifest
    if any("label" not in r for r in rows):
        raise ValueError(f"{run} has unlabeled traces: run `hallugraph label {run}` first")
    return {
        "id": np.array([r["question_id"] for r in rows]),
        "question_id": np.array(
            [r.get("example_meta", {}).get("group", r["question_id"]) for r in rows]
        ),
        "label": np.array([int(r["label"]) for r in rows], dtype=np.int64),
        "answer_tokens": np.array([int(r["answer_len"]) for r in rows], dtype=np.int64),
    }


def report_tiers(out: Path, run: str, p: dict[str, Any]) -> list[list[str]]:
    """The traces a report needs, in the order they are scored: (1) what a ``--partial``
    report needs: the length-matched test answers, and on ``halueval_qa_tf`` (where α and T
    are chosen) the length-matched validation answers; (2) the train side (``groundedness_lr``
    is fitted there, as every baseline) and the other run's length-matched validation
    answers."""
    t = answer_table(out / run)
    split = [p["question_split"][q] for q in t["question_id"].tolist()]
    pair = p["runs"][run]["pair"]
    ids = t["id"].tolist()
    matched = [i for i in ids if pair[i] >= 0]
    side = dict(zip(ids, split, strict=True))
    val = [i for i in matched if side[i] == "val"]
    first = [i for i in matched if side[i] == "test"] + (val if run == ALPHA_RUN else [])
    return [first, [i for i in ids if side[i] == "train"] + ([] if run == ALPHA_RUN else val)]


def report_ids(out: Path, run: str, p: dict[str, Any]) -> list[str]:
    """:func:`report_tiers` in one list."""
    return [i for tier in report_tiers(out, run, p) for i in tier]


def run_frame(
    out: Path, run: str, p: dict[str, Any], partial: bool = False
) -> dict[str, np.ndarray]:
    """Per trace of ``run``: the answer table, split, pair id, stored Gctx / RS / CS and
    ``scored``. Every trace must be scored, or with ``partial`` every length-matched validation
    and test answer (the others are left out of the metrics and the CSV)."""
    from hallugraph.features.groundedness import read_scores

    t = answer_table(out / run)
    scores = read_scores(out / run)["scores"]
    t["split"] = np.array([p["question_split"][q] for q in t["question_id"].tolist()])
    t["pair"] = np.array([p["runs"][run]["pair"][i] for i in t["id"].tolist()], dtype=np.int64)
    t["scored"] = np.array([i in scores for i in t["id"].tolist()])
    sides = ("test", "val") if run == ALPHA_RUN else ("test",)
    need = ~t["scored"] & ((t["pair"] >= 0) & np.isin(t["split"], sides) | (not partial))
    if need.any():
        what = f"length-matched {' / '.join(sides)} traces" if partial else "traces"
        raise ValueError(
            f"{int(need.sum())} {what} of {out / run} have no Groundedness scores (e.g. "
            f"{t['id'][need][0]}): run the score step again"
        )
    for c in ("gctx", "rs", "cs"):
        t[c] = np.array(
            [float(scores[i][c]) if i in scores else np.nan for i in t["id"].tolist()],
            dtype=np.float64,
        )
    return t


def choose_alpha_t(t: dict[str, np.ndarray]) -> Any:
    """α and T on the validation side's length-matched answers only."""
    from hallugraph.detectors.groundedness import fit_groundedness

    v = (t["split"] == "val") & (t["pair"] >= 0)
    return fit_groundedness(t["gctx"][v], t["rs"][v], t["cs"][v], t["label"][v])


MIN_LR_CLASS = 20
"""Fewest scored train answers per class for ``groundedness_lr`` to be fitted on train."""


def baseline_scores(
    out: Path, run: str, t: dict[str, np.ndarray], info: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Test scores (NaN elsewhere) of the detectors fitted on the run's train side; ``info``
    gets ``groundedness_lr_fitted_on`` (``train``, or ``val`` in a partial report whose train
    side is not scored yet)."""
    info = {} if info is None else info
    from hallugraph.detectors import get_detector
    from hallugraph.features import FeatureTable

    X = FeatureTable.from_run(out / run)
    train, test = t["split"] == "train", t["split"] == "test"
    res: dict[str, np.ndarray] = {}
    names = (*BASELINES, "groundedness_lr")
    for name in names:
        s = np.full(len(t["id"]), np.nan)
        # groundedness_lr on the scored answers only (all of them once scoring is done)
        own = t["scored"] if name == "groundedness_lr" else np.ones(len(t["id"]), dtype=bool)
        tr, te = np.flatnonzero(train & own), np.flatnonzero(test & own)
        if name == "groundedness_lr":
            info["groundedness_lr_fitted_on"] = "train"
            if min(np.bincount(t["label"][tr], minlength=2)) < MIN_LR_CLASS:
                # a partial report whose train side is not scored yet: the scored validation
                # answers instead (never test), and the JSON says so
                tr = np.flatnonzero((t["split"] == "val") & own)
                info["groundedness_lr_fitted_on"] = "val"
        try:
            det = get_detector(name).fit(X[tr], t["label"][tr])
            s[te] = det.predict_proba(X[te])
        except ValueError as err:  # e.g. one class on the train side of a tiny pilot
            print(f"{run}: {name} not fitted: {err}", file=sys.stderr)
        res[name] = s
    return res


def evaluate_run(
    t: dict[str, np.ndarray],
    fit: Any,
    base: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Metrics with CIs on the run's length-matched test answers."""
    from hallugraph.detectors.groundedness import groundedness
    from hallugraph.metrics import accuracy, roc_auc

    m = (t["split"] == "test") & (t["pair"] >= 0)
    y = t["label"][m]
    gc, rs, cs = (np.nan_to_num(t[c][m], nan=0.0) for c in ("gctx", "rs", "cs"))
    g_val = np.asarray(groundedness(gc, rs, cs, fit.alpha)).reshape(-1)
    g_half = np.asarray(groundedness(gc, rs, cs, 0.5)).reshape(-1)
    scores = {"groundedness": -g_val, "gctx": -gc, "rs": -rs, "cs": -cs}
    scores.update({k: v[m] for k, v in base.items()})
    preds = {
        "accuracy_T0.4_alpha_val": (g_val < REPORT_T),
        "accuracy_T0.4_alpha_0.5": (g_half < REPORT_T),
        "accuracy_alpha_T_val": (g_val <= fit.threshold),
    }
    res: dict[str, Any] = {
        "n_test": int(m.sum()),
        "n_test_hallucinated": int(y.sum()),
        "n_test_grounded": int((1 - y).sum()),
        "n_questions": len(set(t["question_id"][m].tolist())),
    }
    if len(y) == 0 or len(set(y.tolist())) < 2:
        res["note"] = "the length-matched test side lacks a class: no metric"
        return res
    boots = group_bootstrap(t["question_id"][m], n_boot=n_boot, seed=seed)
    for k, pr in preds.items():
        res[k] = with_ci(lambda ix, pr=pr: float(accuracy(y[ix], pr[ix])[0]), boots, len(y))
    for k, s in scores.items():
        if np.isnan(s).any():
            res[f"auroc_{k}"] = None
            continue
        res[f"auroc_{k}"] = with_ci(lambda ix, s=s: roc_auc(y[ix], s[ix]), boots, len(y))
    return res


def write_csv(path: Path, frames: dict[str, dict[str, np.ndarray]], fit: Any) -> None:
    from hallugraph.detectors.groundedness import groundedness

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for t in frames.values():
        gc, rs, cs = (np.nan_to_num(t[c], nan=0.0) for c in ("gctx", "rs", "cs"))
        g = groundedness(gc, rs, cs, fit.alpha)
        g = np.nan_to_num(np.asarray(g).reshape(-1), nan=0.0)
        for i in np.flatnonzero(t["scored"]):
            lb = t["lookback"][i]
            w.writerow(
                [
                    t["id"][i],
                    t["question_id"][i],
                    t["split"][i],
                    int(t["label"][i]),
                    int(t["answer_tokens"][i]),
                    int(t["pair"][i] >= 0),
                    *(_num(t[c][i]) for c in ("gctx", "rs", "cs")),
                    _num(g[i]),
                    "" if np.isnan(lb) else _num(lb),
                ]
            )
    atomic_write_text(path, buf.getvalue())


def _num(v: float) -> str:
    return "" if not np.isfinite(v) else f"{float(v):.6g}"


def plot_distributions(path: Path, t: dict[str, np.ndarray], fit: Any, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hallugraph.detectors.groundedness import groundedness

    m = (t["split"] == "test") & (t["pair"] >= 0)
    gc = np.nan_to_num(t["gctx"][m])
    g = np.asarray(
        groundedness(gc, np.nan_to_num(t["rs"][m]), np.nan_to_num(t["cs"][m]), fit.alpha)
    )
    y = t["label"][m]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, v, name in (
        (axes[0], gc, "Gctx"),
        (axes[1], g.reshape(-1), f"Groundedness (α={fit.alpha:.2f})"),
    ):
        bins = np.linspace(float(np.min(v, initial=0)), float(np.max(v, initial=1)), 25)
        ax.hist(v[y == 0], bins=bins, alpha=0.6, label=f"grounded (n={int((y == 0).sum())})")
        ax.hist(v[y == 1], bins=bins, alpha=0.6, label=f"hallucinated (n={int(y.sum())})")
        if name.startswith("Groundedness"):
            ax.axvline(REPORT_T, color="k", ls="--", lw=1, label="T = 0.4 (report)")
            ax.axvline(
                fit.threshold, color="r", ls=":", lw=1, label=f"T = {fit.threshold:.3f} (val)"
            )
        ax.set_xlabel(name)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cpu_account(out: Path, steps: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds of the evaluation: each finished step's (``steps.json``; a step killed before
    it finished is not there), and the scoring as the sum of the stored per-answer CPU seconds
    (``cpu_s``, one thread per process; records made before it was stored count their wall
    ``seconds``, an upper bound on a shared machine: ``scoring_wall_answers`` says how many;
    answers taken over from the sweep are left out: their time is the sweep step's)."""
    from hallugraph.features.groundedness import read_scores

    by_step = {k: float(v.get("cpu_s", 0.0)) for k, v in steps.items() if k != "score"}
    scoring, wall = {}, {}
    for r in RUNS:
        recs = [v for v in read_scores(out / r)["scores"].values() if not v.get("from_sweep")]
        scoring[r] = round(sum(float(v.get("cpu_s", v["seconds"])) for v in recs), 1)
        wall[r] = sum("cpu_s" not in v for v in recs)
    total = sum(by_step.values()) + sum(scoring.values())
    return {
        "steps_cpu_s": by_step,
        "scoring_answer_s": scoring,
        "scoring_wall_answers": wall,
        "total_s": round(total, 1),
        "note": "scoring = sum of per-answer CPU seconds (1 thread per process; wall seconds "
        "for the answers counted in scoring_wall_answers); steps from steps.json (extraction "
        "is its own line when the extract step ran here)",
    }


def write_report(
    cfg: Any, p: dict[str, Any], nodes: int, targets: str, steps: dict[str, Any]
) -> dict[str, Any]:
    """Everything of the report step; returns the JSON written."""
    from hallugraph.config import cpu_name

    out = Path(cfg.out)
    rdir = Path(cfg.report_dir) if cfg.report_dir else out / "report"
    rdir.mkdir(parents=True, exist_ok=True)
    partial = bool(getattr(cfg, "partial", False))
    frames, not_reported = {}, {}
    for r in RUNS:
        try:
            frames[r] = run_frame(out, r, p, partial)
        except ValueError as err:  # a partial report may wait for the second run's scores
            if not partial or r == ALPHA_RUN:
                raise
            not_reported[r] = str(err)
            print(f"{r}: not in this partial report: {err}", file=sys.stderr)
    fit = choose_alpha_t(frames[ALPHA_RUN])
    metrics = {}
    for r, t in frames.items():
        info: dict[str, Any] = {}
        base = baseline_scores(out, r, t, info)
        t["lookback"] = base["lookback_lens"]
        metrics[r] = {**evaluate_run(t, fit, base, cfg.bootstrap, cfg.seed), **info}
    write_csv(rdir / "groundedness_scores.csv", frames, fit)
    sweep = out / "sweep.json"
    for ext in ("json", "csv"):
        if (out / f"sweep.{ext}").is_file():
            atomic_write_text(
                rdir / f"groundedness_sweep.{ext}", (out / f"sweep.{ext}").read_text()
            )
    result = {
        "node_budget": nodes,
        "target_mode": targets,
        "alpha": fit.alpha,
        "T": fit.threshold,
        "validation_balanced_accuracy": fit.balanced_accuracy,
        "transcoders": resolve_set(cfg.transcoders),
        "evaluation_set": f"halueval_qa_tf, test side, length-matched pairs (±{p['tol']} tokens)",
        "splits": {"seed": p["seed"], "frac": p["frac"], "grouped_by": "question"},
        "counts": {r: p["runs"][r]["counts"] for r in RUNS},
        "scored": {
            r: {"scored": int(t["scored"].sum()), "traces": len(t["id"])} for r, t in frames.items()
        },
        "partial": partial
        and (bool(not_reported) or any(not t["scored"].all() for t in frames.values())),
        "not_reported": not_reported,
        "metrics": metrics,
        "sweep": json.loads(sweep.read_text()) if sweep.is_file() else None,
        "steps": steps,
        "cpu_seconds": cpu_account(out, steps),
        "cpu": cpu_name(),
        "bootstrap": cfg.bootstrap,
    }
    atomic_write_json(rdir / "groundedness.json", result)
    title = (
        f"halueval_qa_tf length-matched test, {nodes} nodes, targets {targets}; CPU {cpu_name()}"
    )
    plot_distributions(
        rdir / "groundedness_distributions.png", frames["halueval_qa_tf"], fit, title
    )
    if cfg.graph_png:
        draw_example_graph(cfg, frames["halueval_qa_tf"], nodes, rdir)
    return result


def draw_example_graph(cfg: Any, t: dict[str, np.ndarray], nodes: int, rdir: Path) -> None:
    """One hallucinated length-matched test answer's graph (``hallugraph attribution --png``),
    the one with the lowest Gctx."""
    m = np.flatnonzero((t["split"] == "test") & (t["pair"] >= 0) & (t["label"] == 1))
    png = rdir / "groundedness_graph_hallucinated.png"
    if not len(m) or png.is_file():
        return
    i = int(m[np.argmin(np.nan_to_num(t["gctx"][m], nan=1.0))])
    cmd = [sys.executable, "-m", "hallugraph", "attribution", str(Path(cfg.out) / "halueval_qa_tf")]
    cmd += ["--index", str(i), "--png", str(png), "--png-dpi", "70"]
    cmd += ["--max-feature-nodes", str(nodes)]
    cmd += ["--transcoders", resolve_set(cfg.transcoders), "--device", "cpu"]
    cmd += ["--threads", str(cfg.threads), "--out", str(Path(cfg.out) / "graphs")]
    cmd += ["--model", cfg.model] if cfg.model else []
    print("$ " + " ".join(cmd[2:]), flush=True)
    if subprocess.call(cmd):
        print(f"warning: the example graph {png} was not drawn (see above)", file=sys.stderr)

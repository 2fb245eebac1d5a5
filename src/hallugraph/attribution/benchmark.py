"""``hallugraph groundedness-eval OUT``: the whole Groundedness benchmark of issue 13, one
command, resumable at every step (re-run the same command after an interruption).

Steps (each skipped or resumed when already done; wall and CPU seconds of each in
``OUT/steps.json``):

1. ``extract``: ``hallugraph extract`` of ``halueval_qa_tf`` (3 answers per question) and
   ``halueval_qa`` (the model's own answer) with ``--keep-tensors no`` (every statistic,
   e.g. Lookback Lens's, computed at extraction), then ``hallugraph label``;
2. ``plan``: question splits and the length-matched set (:mod:`.lengthmatch`) in
   ``OUT/plan.json``; the splits hold for both runs (same question ids);
3. ``sweep``: node budgets × target modes on the validation side's length-matched answers
   (at most ``sweep_answers``; never a test answer): AUROC and seconds per answer per setting,
   and the knee (:func:`choose_setting`) in ``OUT/sweep.csv`` / ``sweep.json``;
4. ``score``: ``hallugraph groundedness RUN --shard K/N`` in ``processes`` parallel processes
   for both runs with the chosen setting, then ``--merge N``;
5. ``report``: :mod:`.benchmark_report` (CSV, JSON, PNG).
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.attribution.benchmark_report import (
    RUNS,
    answer_table,
    report_tiers,
    resolve_set,
    write_report,
)
from hallugraph.attribution.lengthmatch import (
    DEFAULT_FRAC,
    count_matched,
    length_match,
    question_splits,
)
from hallugraph.io import atomic_write_json, atomic_write_text

DEFAULT_TRANSCODERS = "smollm2-135m-2h-v2"
KNEE_TOL = 0.01
"""A node budget is 'enough' when its AUROC is within this of the best budget's."""
ALL_GAIN = 0.02
"""``targets=all`` (one graph per answer token) is chosen only when it beats ``first`` by this."""


@dataclass
class EvalConfig:
    out: str
    transcoders: str = DEFAULT_TRANSCODERS
    model: str | None = None
    """Checkpoint folder to attribute with (default: the runs' model)."""
    questions: int | None = None
    """The first N HaluEval-QA questions (None: all 500)."""
    nodes: tuple[int, ...] = (32, 64, 128, 256, 512)
    sweep_targets: tuple[str, ...] = ("first", "all")
    sweep_all_nodes: tuple[int, ...] | None = None
    """Budgets swept with ``targets=all`` (one graph per answer token); None: ``nodes``."""
    sweep_answers: int = 150
    sweep_max_answer_tokens: int | None = None
    max_feature_nodes: int | None = None
    """Skip the knee: score with this budget (the sweep still runs unless ``skip_sweep``)."""
    targets: str | None = None
    skip_sweep: bool = False
    processes: int = 2
    threads: int = 1
    seed: int = 0
    frac: tuple[float, float, float] = DEFAULT_FRAC
    tol: int = 2
    bootstrap: int = 1000
    partial: bool = False
    """Skip the score step and report on what is scored (every length-matched validation and
    test answer must be); the JSON says how many traces were scored."""
    report_dir: str | None = None
    """Where the CSV / JSON / PNG go (default ``OUT/report``; the real run: docs/benchmark)."""
    graph_png: bool = True
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _py() -> list[str]:
    return [sys.executable, "-m", "hallugraph"]


class Steps:
    """``OUT/steps.json``: what is done, with the wall and child-CPU seconds of each step."""

    def __init__(self, out: Path) -> None:
        self.path = out / "steps.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, fn: Any, *a: Any, key: Any = None, **kw: Any) -> Any:
        """Run step ``name`` (its time added to the earlier attempts'); with ``key``, skip it
        when it is already done with the same key."""
        prev = self.data.get(name, {})
        if key is not None and prev.get("done") and prev.get("key") == key:
            return None
        t0, c0 = time.perf_counter(), _cpu()
        res = fn(*a, **kw)
        self.data[name] = {
            "wall_s": round(prev.get("wall_s", 0) + time.perf_counter() - t0, 1),
            "cpu_s": round(prev.get("cpu_s", 0) + _cpu() - c0, 1),
            "done": True,
            **({} if key is None else {"key": key}),
        }
        atomic_write_json(self.path, self.data)
        return res


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _call(cmd: Sequence[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print("$ " + " ".join(cmd[2:] if cmd[:2] == _py()[:2] else cmd), flush=True)
    rc = subprocess.call(list(cmd), env=env)
    if rc:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {rc}")


def _parallel(cmds: Sequence[Sequence[str]], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = []
    for c in cmds:
        print("$ " + " ".join(c[2:]) + " &", flush=True)
        procs.append(subprocess.Popen(list(c), env=env))
    bad = [(c, p.wait()) for c, p in zip(cmds, procs, strict=True)]
    bad = [(c, rc) for c, rc in bad if rc]
    if bad:
        raise RuntimeError(f"`{' '.join(bad[0][0])}` exited with {bad[0][1]}")


# ---------------------------------------------------------------------------------------------
# steps


def extract(cfg: EvalConfig) -> None:
    out = Path(cfg.out)
    nq = cfg.questions
    cmds = []
    for ds, n in (("halueval_qa_tf", None if nq is None else 3 * nq), ("halueval_qa", nq)):
        cmd = [*_py(), "extract", "--dataset", ds, "--out", str(out / ds), "--keep-tensors", "no"]
        cmd += [] if n is None else ["--num-samples", str(n)]
        cmds.append(cmd + ([] if cfg.progress else ["--no-progress"]))
    if cfg.processes > 1:  # the two runs side by side
        _parallel(cmds, cfg.threads)
    else:
        for cmd in cmds:
            _call(cmd, cfg.threads)
    _call([*_py(), "label", *(str(out / r) for r in RUNS)], cfg.threads)


def plan(cfg: EvalConfig) -> dict[str, Any]:
    """Splits by question (shared by both runs) and the length-matched pairs of each run."""
    out = Path(cfg.out)
    tf = answer_table(out / "halueval_qa_tf")
    split = question_splits(tf["question_id"], tf["label"], seed=cfg.seed, frac=cfg.frac)
    q_split = dict(zip(tf["question_id"].tolist(), split.tolist(), strict=True))
    result: dict[str, Any] = {
        "seed": cfg.seed,
        "frac": list(cfg.frac),
        "tol": cfg.tol,
        "question_split": q_split,
        "runs": {},
    }
    for r in RUNS:
        t = tf if r == "halueval_qa_tf" else answer_table(out / r)
        missing = sorted(set(t["question_id"].tolist()) - set(q_split))
        if missing:
            raise ValueError(f"{r}: questions {missing[:3]} are not in halueval_qa_tf")
        sp = np.array([q_split[q] for q in t["question_id"].tolist()])
        pair = length_match(t["answer_tokens"], t["label"], sp, tol=cfg.tol, seed=cfg.seed)
        result["runs"][r] = {
            "pair": dict(zip(t["id"].tolist(), pair.tolist(), strict=True)),
            "counts": count_matched(t["answer_tokens"], t["label"], sp, pair),
        }
    atomic_write_json(out / "plan.json", result)
    return result


def sweep_ids(p: dict[str, Any], n: int) -> list[str]:
    """The sweep's answers: whole length-matched pairs of the validation side only, at most
    ``n`` answers, in pair order."""
    pairs = p["runs"]["halueval_qa_tf"]["pair"]
    val = {q for q, s in p["question_split"].items() if s == "val"}
    tf = answer_table(Path(p["_out"]) / "halueval_qa_tf")
    ids = [
        i
        for i, q in zip(tf["id"].tolist(), tf["question_id"].tolist(), strict=True)
        if q in val and pairs[i] >= 0
    ]
    ids.sort(key=lambda i: (pairs[i], i))
    return ids[: n - n % 2]


def choose_setting(table: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The knee: for each target mode, the smallest node budget whose AUROC of Groundedness is
    within :data:`KNEE_TOL` of the best budget's; ``all`` only when its knee beats ``first``'s
    by :data:`ALL_GAIN` (it costs one graph per answer token). Returns the chosen row."""
    best: dict[str, dict[str, Any]] = {}
    for mode in sorted({r["targets"] for r in table}):
        rows = [r for r in table if r["targets"] == mode and r["auroc"] is not None]
        if not rows:
            continue
        top = max(r["auroc"] for r in rows)
        best[mode] = min(
            (r for r in rows if r["auroc"] >= top - KNEE_TOL), key=lambda r: r["nodes"]
        )
    if not best:
        raise ValueError("no sweep setting has an AUROC (one class only?)")
    if "first" in best and "all" in best:
        return (
            best["all"]
            if best["all"]["auroc"] >= best["first"]["auroc"] + ALL_GAIN
            else (best["first"])
        )
    return next(iter(best.values()))


def sweep(cfg: EvalConfig, p: dict[str, Any]) -> dict[str, Any]:
    """Score the sweep answers with every setting (worker processes, resumable), then the
    table and the knee."""
    from hallugraph.attribution.sweep_worker import load_sweep, setting_key, sweep_table

    out = Path(cfg.out)
    ids = sweep_ids({**p, "_out": str(out)}, cfg.sweep_answers)
    if len(ids) < 4:
        raise ValueError(f"only {len(ids)} length-matched validation answers for the sweep")
    (out / "sweep").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sweep" / "ids.json", ids)
    settings = [
        (n, t)
        for t in cfg.sweep_targets
        for n in (cfg.sweep_all_nodes or cfg.nodes if t == "all" else cfg.nodes)
    ]
    n = max(1, cfg.processes)
    cmds = []
    for k in range(n):
        cmd = [sys.executable, "-m", "hallugraph.attribution.sweep_worker", str(out)]
        cmd += ["--shard", f"{k}/{n}", "--transcoders", resolve_set(cfg.transcoders)]
        cmd += ["--settings", ",".join(f"{a}:{b}" for a, b in settings)]
        cmd += ["--threads", str(cfg.threads)] + (["--model", cfg.model] if cfg.model else [])
        if cfg.sweep_max_answer_tokens:
            cmd += ["--max-answer-tokens", str(cfg.sweep_max_answer_tokens)]
        cmds.append(cmd + ([] if cfg.progress else ["--no-progress"]))
    _parallel(cmds, cfg.threads)
    keys = {setting_key(a, b) for a, b in settings}  # not those of an earlier, other sweep
    table = sweep_table(
        {k: v for k, v in load_sweep(out, n).items() if k in keys},
        ids,
        answer_table(out / "halueval_qa_tf"),
        load_sweep(out, n, "timing"),
    )
    chosen = choose_setting(table)
    res = {
        "answers": len(ids),
        "rule": f"per target mode the smallest budget within {KNEE_TOL} AUROC of the best; "
        f"'all' only if it beats 'first' by {ALL_GAIN}",
        "chosen": {"nodes": chosen["nodes"], "targets": chosen["targets"]},
        "table": table,
    }
    atomic_write_json(out / "sweep.json", res)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    return res


def chosen_setting(cfg: EvalConfig) -> tuple[int, str]:
    out = Path(cfg.out)
    sw = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else {}
    c = sw.get("chosen", {})
    nodes = cfg.max_feature_nodes or c.get("nodes")
    targets = cfg.targets or c.get("targets")
    if not nodes or not targets:
        raise ValueError("no sweep result: run the sweep or give --max-feature-nodes and --targets")
    return int(nodes), str(targets)


def reuse_sweep(cfg: EvalConfig, nodes: int, targets: str) -> int:
    """Copy the sweep's records of the chosen setting (validation answers of
    ``halueval_qa_tf``, cut from the sweep's largest graph: the graphs of separate runs, to
    rounding) into that run's scores, marked ``from_sweep``; returns how many. Nothing is
    copied into scores made with other settings."""
    from hallugraph.attribution.run import stored_settings
    from hallugraph.attribution.settings import MATCHING, AttributionSettings, resolve_transcoders
    from hallugraph.attribution.sweep_worker import load_sweep, setting_key
    from hallugraph.features.groundedness import read_scores, write_scores

    out = Path(cfg.out)
    recs = load_sweep(out, max(1, cfg.processes)).get(setting_key(nodes, targets), {})
    if not recs:
        return 0
    tdir = resolve_transcoders(resolve_set(cfg.transcoders), "")  # as score_run names it
    st = AttributionSettings(
        max_feature_nodes=nodes,
        targets=targets,
        max_answer_tokens=cfg.sweep_max_answer_tokens if targets == "all" else None,
    )
    settings = stored_settings(st, tdir)
    run = out / RUNS[0]
    payload = read_scores(run)
    old = payload["settings"] or {}
    if payload["scores"] and any(old.get(k) != settings[k] for k in MATCHING):
        return 0
    new = {i: {**r, "from_sweep": True} for i, r in recs.items() if i not in payload["scores"]}
    if new:
        payload["settings"] = settings
        payload["scores"].update(new)
        write_scores(run, payload)
    return len(new)


def score(cfg: EvalConfig, p: dict[str, Any]) -> None:
    """Both runs with the chosen setting, in passes over both runs: the answers a
    ``--partial`` report needs, then the train side, then the rest
    (:func:`~.benchmark_report.report_tiers`); each pass in ``processes`` shards, merged."""
    nodes, targets = chosen_setting(cfg)
    n = max(1, cfg.processes)
    out = Path(cfg.out)
    reuse_sweep(cfg, nodes, targets)
    tiers = {r: report_tiers(out, r, p) for r in RUNS}
    for r in RUNS:
        atomic_write_json(out / f"first-{r}.json", [i for t in tiers[r] for i in t])
    for k in range(len(tiers[RUNS[0]]) + 1):
        for r in RUNS:
            run = str(out / r)
            base = [*_py(), "groundedness", run, "--transcoders", resolve_set(cfg.transcoders)]
            base += ["--first", str(out / f"first-{r}.json")]
            if k < len(tiers[r]):  # this pass: the first k + 1 tiers (earlier ones are done)
                base += ["--limit", str(sum(len(t) for t in tiers[r][: k + 1]))]
            base += ["--max-feature-nodes", str(nodes), "--targets", targets, "--device", "cpu"]
            base += ["--threads", str(cfg.threads)] + ([] if cfg.progress else ["--no-progress"])
            base += ["--model", cfg.model] if cfg.model else []
            if targets == "all" and cfg.sweep_max_answer_tokens:  # as in the sweep
                base += ["--max-answer-tokens", str(cfg.sweep_max_answer_tokens)]
            if n == 1:
                _call(base, cfg.threads)
                continue
            _parallel([[*base, "--shard", f"{j}/{n}"] for j in range(n)], cfg.threads)
            _call([*_py(), "groundedness", run, "--merge", str(n)], cfg.threads)


def run_eval(cfg: EvalConfig, plan_only: bool = False) -> dict[str, Any]:
    """The whole benchmark (see the module docstring); returns the report's summary."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", asdict(cfg))
    steps = Steps(out)
    steps.run("extract", extract, cfg, key={"questions": cfg.questions})
    p = steps.run("plan", plan, cfg)
    if plan_only:
        return {r: p["runs"][r]["counts"] for r in RUNS}
    if not cfg.skip_sweep:
        steps.run("sweep", sweep, cfg, p)
    if not cfg.partial:
        steps.run("score", score, cfg, p)
    nodes, targets = chosen_setting(cfg)
    return steps.run("report", write_report, cfg, p, nodes, targets, steps.data)

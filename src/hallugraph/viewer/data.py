"""What the viewer's pages show, as JSON-able dicts: run summaries, the trace list, one trace's
tokens and signals, its attention graph at one layer, the evaluation table and ROC points.

Every function reads only what its page shows: the trace list comes from the manifest (no
tensor), a trace's tensors are read when its token or graph page asks for them (one trace,
attention maps only, kept in a one-entry cache so that moving the layer slider does not re-read
the shard). Nothing here writes a file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.graphs.graph import build_graph
from hallugraph.graphs.roles import ROLES, token_roles
from hallugraph.store import TraceStore

__all__ = ["RunView", "lookback_per_token", "top_sources"]

LIST_SCORES = ("log_perplexity", "min_logprob", "mean_entropy")
"""Per-trace scores shown in the trace list (columns of the ``logit`` statistic)."""
SORT_KEYS = ("index", "label", "answer_len", *LIST_SCORES)
TOP_SOURCES = 5


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def lookback_per_token(attn: np.ndarray, prompt_len: int, ctx: slice) -> np.ndarray:
    """Lookback ratio of each answer token, ``[answer_len]``, averaged over layers and heads.

    Answer token ``t`` (position ``p + t``) was produced by query row ``q = p + t - 1``; its ratio
    is ``c / (c + g)``, ``c`` the mean weight of that row on the ``ctx`` columns and ``g`` its
    mean weight on the answer columns ``p .. q`` (none for ``t = 0``: ``g = 0``), as in
    :func:`hallugraph.features.attention.lookback_ratio`, whose value is the mean of these over
    ``t = 1 .. n - 1`` (per layer and head). ``attn`` is ``[L, heads, S, S]``.
    """
    p = int(prompt_len)
    S = attn.shape[-1]
    rows = np.asarray(attn[..., p - 1 : S - 1, :], dtype=np.float64)  # [L, H, n, S]
    n = rows.shape[-2]
    c = rows[..., ctx].mean(axis=-1)
    gen_sum = rows[..., p:].sum(axis=-1)
    counts = np.arange(n, dtype=np.float64)  # row p-1+t has t answer keys p..p+t-1
    gen = np.divide(gen_sum, counts, out=np.zeros_like(gen_sum), where=counts > 0)
    den = c + gen
    ratio = np.divide(c, den, out=np.full_like(den, 0.5), where=den > 0)
    return ratio.mean(axis=(0, 1))


def top_sources(attn: np.ndarray, k: int = TOP_SOURCES) -> list[list[list[float]]]:
    """For every query token, its ``k`` heaviest keys ``[[position, weight], ...]`` in the mean
    over layers and heads of ``attn [L, heads, S, S]`` (ties: the earlier key first)."""
    mean = np.asarray(attn, dtype=np.float32).mean(axis=(0, 1), dtype=np.float64)
    order = np.argsort(-mean, axis=1, kind="stable")[:, :k]
    out = []
    for q in range(mean.shape[0]):
        out.append(
            [[int(j), round(float(mean[q, j]), 5)] for j in order[q].tolist() if mean[q, j] > 0]
        )
    return out


class RunView:
    """One run as the viewer sees it: a :class:`TraceStore` (read-only) plus, when found, the
    outputs of ``hallugraph evaluate`` that include it and its attribution graphs."""

    def __init__(
        self,
        path: str | Path,
        eval_dirs: Sequence[str | Path] = (),
        graph_dirs: Sequence[str | Path] = (),
    ) -> None:
        self.path = Path(path)
        self.store = TraceStore(self.path)
        self.name = self.path.name
        extra = [Path(d) for d in eval_dirs]
        self.eval_dirs = [
            d
            for d in dict.fromkeys([*extra, self.path.parent / "eval", self.path / "eval"])
            if (d / "results.json").is_file()
        ]
        self.graph_dirs = [
            d
            for d in dict.fromkeys([self.path / "attribution" / "graphs", *map(Path, graph_dirs)])
            if d.is_dir()
        ]
        self._list: list[dict[str, Any]] | None = None
        self._trace: tuple[int, dict[str, Any]] | None = None
        self._roc: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        rows = self.store.rows
        labels = [r.get("label") for r in rows]
        known = [int(v) for v in labels if v is not None]
        info = self.store.info
        return {
            "name": self.name,
            "path": str(self.path),
            "model": info.get("model"),
            "model_id": info.get("model_id"),
            "dataset": info.get("dataset"),
            "n_traces": len(rows),
            "labeled": len(known),
            "hallucinated": int(sum(known)),
            "correct": len(known) - int(sum(known)),
            "codec": self.store.codec,
            "tensors_kept": any(self.store.shard_path(s).exists() for s in self.store.shards),
            "with_context": sum(1 for r in rows if r.get("context_span")),
            "eval_dirs": [str(d) for d in self.eval_dirs],
            "graphs": [g["slug"] for g in self.graphs()],
        }

    # ----------------------------------------------------------------------------- trace list
    def _list_rows(self) -> list[dict[str, Any]]:
        if self._list is None:
            from hallugraph.features import get_statistic

            logit = get_statistic("logit")
            out = []
            for i, r in enumerate(self.store.rows):
                item: dict[str, Any] = {
                    "index": i,
                    "question_id": r.get("question_id"),
                    "question": r.get("question") or "",
                    "answer": r.get("generated_answer_clean") or "",
                    "label": r.get("label"),
                    "answer_len": int(r.get("answer_len", 0)),
                    "seq_len": int(r.get("seq_len", 0)),
                }
                try:
                    v = logit.values(r, self.store.info)
                    for name in LIST_SCORES:
                        item[name] = _finite(v[logit.outputs.index(name)])
                except (KeyError, ValueError, IndexError, TypeError):
                    item.update({name: None for name in LIST_SCORES})
                out.append(item)
            self._list = out
        return self._list

    def traces(
        self,
        offset: int = 0,
        limit: int = 50,
        sort: str = "index",
        desc: bool = False,
        q: str = "",
        label: str = "",
    ) -> dict[str, Any]:
        """One page of the trace list, filtered (question / answer text, label) and sorted."""
        if sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
        rows = self._list_rows()
        if q:
            needle = q.lower()
            rows = [
                r for r in rows if needle in r["question"].lower() or needle in r["answer"].lower()
            ]
        if label in ("0", "1"):
            rows = [r for r in rows if r["label"] is not None and int(r["label"]) == int(label)]
        elif label == "none":
            rows = [r for r in rows if r["label"] is None]
        known = [r for r in rows if r[sort] is not None]
        unknown = [r for r in rows if r[sort] is None]
        known.sort(key=lambda r: r[sort], reverse=desc)
        rows = known + unknown
        limit = max(1, min(int(limit), 500))
        offset = max(0, int(offset))
        return {
            "total": len(rows),
            "offset": offset,
            "limit": limit,
            "rows": rows[offset : offset + limit],
        }

    def check_index(self, i: int) -> int:
        if not 0 <= i < len(self.store):
            raise IndexError(f"trace {i} out of range: {self.name} has {len(self.store)} traces")
        return i

    def trace_meta(self, i: int) -> dict[str, Any]:
        """The manifest row of trace ``i`` (everything but tensors)."""
        return dict(self.store.rows[self.check_index(i)])

    # ----------------------------------------------------------------------------- tensors
    def _attn_trace(self, i: int) -> dict[str, Any]:
        if self._trace is None or self._trace[0] != i:
            self._trace = None  # free the previous one first
            self._trace = (i, self.store.get(self.check_index(i), fields=("attentions",)))
        return self._trace[1]

    def has_tensors(self, i: int) -> bool:
        row = self.store.rows[self.check_index(i)]
        return self.store.shard_path(row["shard"]).exists()

    def tokens(self, i: int) -> dict[str, Any]:
        """Tokens, roles and per-token signals of trace ``i``: ``logprob`` and ``entropy`` of
        the answer tokens, and, when its tensors were kept, ``lookback`` (of every answer token
        but the first, whose ratio is 1 by construction, unless it is the only one) and the top
        attention ``sources`` of every token."""
        row = self.store.rows[self.check_index(i)]
        S = int(row["seq_len"])
        p = int(row["prompt_len"])
        n = S - p
        roles = token_roles(row)
        signals: dict[str, list[float | None]] = {}
        for name, key in (("logprob", "token_logprobs"), ("entropy", "token_entropy")):
            vals = row.get(key)
            if vals is not None:
                signals[name] = [None] * p + [_finite(v) for v in list(vals)[:n]]
        sources = None
        if self.has_tensors(i):
            attn = self._attn_trace(i)["attentions"]
            from hallugraph.features.attention import context_columns

            ctx = context_columns(row, "span")
            lb = [_finite(v) for v in lookback_per_token(attn, p, ctx).tolist()]
            if n >= 2:  # no answer token before the first: its ratio is 1 by construction
                lb[0] = None
            signals["lookback"] = [None] * p + lb
            sources = top_sources(attn)
        return {
            "index": i,
            "question_id": row.get("question_id"),
            "question": row.get("question"),
            "answer": row.get("generated_answer_clean"),
            "label": row.get("label"),
            "prompt_len": p,
            "context_span": row.get("context_span"),
            "tokens": [str(t) for t in row.get("tokens_decoded") or [""] * S],
            "roles": [ROLES[r] for r in roles.tolist()],
            "signals": signals,
            "sources": sources,
        }

    def graph(
        self,
        i: int,
        layer: int,
        head: int | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        hide_sink: bool = False,
        self_loops: bool = False,
    ) -> dict[str, Any]:
        """Trace ``i``'s attention graph at ``layer`` (:func:`hallugraph.graphs.build_graph`),
        heads averaged or only ``head``."""
        trace = self._attn_trace(i)
        attn = trace["attentions"]
        L, H = int(attn.shape[0]), int(attn.shape[1])
        if not 0 <= layer < L:
            raise ValueError(f"layer {layer} out of range (0..{L - 1})")
        if head is not None:
            if not 0 <= head < H:
                raise ValueError(f"head {head} out of range (0..{H - 1})")
            trace = {**trace, "attentions": attn[:, head : head + 1]}
        g = build_graph(
            trace,
            layer,
            heads="mean",
            threshold=threshold,
            top_k=top_k,
            self_loops=self_loops,
            hide_sink=hide_sink,
        )
        src, dst = g.edge_index
        return {
            "index": i,
            "layer": layer,
            "head": head,
            "num_layers": L,
            "num_heads": H,
            "nodes": [
                {"id": k, "text": g.token_strings[k], "role": ROLES[r]}
                for k, r in enumerate(g.roles.tolist())
            ],
            "edges": [
                [int(s), int(d), round(float(w), 6)]
                for s, d, w in zip(src.tolist(), dst.tolist(), g.weight.tolist(), strict=True)
            ],
            "meta": {k: v for k, v in g.meta.items()},
        }

    # ----------------------------------------------------------------------------- evaluation
    def evaluations(self) -> list[dict[str, Any]]:
        """The rows of every ``results.json`` found that evaluated this run."""
        out = []
        me = self.path.resolve()
        for d in self.eval_dirs:
            data = json.loads((d / "results.json").read_text(encoding="utf-8"))
            rows = [
                r
                for r in data.get("results", [])
                if r.get("run") and Path(r["run"]).resolve() == me
            ]
            if rows:
                out.append({"dir": str(d), "config": data.get("config", {}), "rows": rows})
        return out

    def roc(self) -> dict[str, Any]:
        """Every evaluated detector's out-of-fold scores of this run (first repeat), as
        ``evaluate`` saved them (``scores_<dataset>.json``), with each point's trace index, and
        the AUROC over the repeats beside the one ``evaluate`` reported."""
        if self._roc is not None:
            return self._roc
        from hallugraph.metrics import roc_auc

        evals = self.evaluations()
        result: dict[str, Any] = {"detectors": [], "note": ""}
        me = self.path.resolve()
        for ev in evals:
            for f in sorted(Path(ev["dir"]).glob("scores_*.json")):
                data = json.loads(f.read_text(encoding="utf-8"))
                if not data.get("run") or Path(data["run"]).resolve() != me:
                    continue
                reported = {r["detector"]: r for r in ev["rows"]}
                idx, y = data["trace_index"], np.asarray(data["label"])
                for name, reps in data["scores"].items():
                    s = np.asarray(reps, dtype=np.float64)
                    result["detectors"].append(
                        {
                            "name": name,
                            "auroc": _finite(float(np.mean([roc_auc(y, r) for r in s]))),
                            "auroc_reported": _finite(reported.get(name, {}).get("auroc")),
                            "points": [
                                [int(i), int(lab), float(v)]
                                for i, lab, v in zip(idx, y.tolist(), s[0].tolist(), strict=True)
                            ],
                        }
                    )
                result["eval_dir"] = ev["dir"]
                self._roc = result
                return result
        result["note"] = "no evaluate outputs with per-answer scores found for this run"
        self._roc = result
        return result

    # ----------------------------------------------------------------------------- attribution
    def graphs(self) -> list[dict[str, Any]]:
        """Attribution graphs (circuit-tracer's viewer JSON) found in the run's graph folders."""
        out = []
        for d in self.graph_dirs:
            for f in sorted(d.glob("*.json")):
                if f.name == "graph-metadata.json" or f.name.endswith(".scores.json"):
                    continue
                out.append({"slug": f.stem, "dir": str(d)})
        return out

    def graph_file(self, slug: str) -> tuple[Path, Path | None]:
        for g in self.graphs():
            if g["slug"] == slug:
                d = Path(g["dir"])
                scores = d / f"{slug}.scores.json"
                return d / f"{slug}.json", scores if scores.is_file() else None
        raise KeyError(f"no attribution graph {slug!r} in {self.name}")


def load_runs(
    paths: Sequence[str | Path],
    eval_dirs: Sequence[str | Path] = (),
    graph_dirs: Sequence[str | Path] = (),
) -> list[RunView]:
    """Open every run (raising :class:`hallugraph.store.StoreError` naming a bad folder)."""
    return [RunView(p, eval_dirs, graph_dirs) for p in paths]

"""Fit a detector on labeled runs for deployment (:meth:`hallugraph.Scorer.train`).

Each run is split as :func:`hallugraph.evaluation.evaluate` splits it (60/20/20 by question,
stratified by label, same seed); the detector is fitted on the train splits of all runs
together, the threshold chosen on their validation splits (maximal balanced accuracy), and,
with ``refit``, the detector fitted again on train + validation with that threshold kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.scoring.bundle import statistic_versions

# run.json keys that must agree between the runs a detector is trained on
_SAME = ("model", "model_dtype", "dtype", "num_layers", "num_heads", "hidden_size")


class ScoringError(ValueError):
    """The input cannot be scored as given (empty answer, missing context, too long...)."""


def check_scorable(detector: Any) -> None:
    """Refuse detectors whose statistics need more than the trace (attribution scores)."""
    if getattr(detector, "family", "") == "attribution":
        raise ScoringError(
            f"detector {detector.name!r} reads attribution-graph scores, which exist only for a "
            "run's traces (hallugraph groundedness RUN), minutes per answer: it cannot score a "
            "new answer. Use it through hallugraph evaluate"
        )


def _auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    from hallugraph.metrics import roc_auc

    if len(y) == 0 or len(np.unique(y)) < 2:
        return None
    return float(roc_auc(y, s))


def _context_of(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    has = {r.get("context") is not None for r in rows}
    if len(has) > 1:
        raise ValueError(f"run {path} mixes answers with and without a context")
    return has.pop() if has else False


def _prefix_tokens(path: Path, info: Mapping[str, Any]) -> list[int]:
    from safetensors import safe_open

    from hallugraph.store.layout import SHARED

    if not int(info.get("prefix_len", 0)) or not (path / SHARED).exists():
        return []
    with safe_open(str(path / SHARED), framework="np") as fh:
        return [int(t) for t in fh.get_tensor("prefix.tokens")]


def fit_on_runs(
    name: str,
    runs: Sequence[str | os.PathLike[str]],
    *,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    frac: tuple[float, float, float] = (0.6, 0.2, 0.2),
    refit: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """``(fitted detector, bundle metadata)``; raises ``ValueError`` naming the run or the
    detector when the runs cannot train it."""
    from hallugraph.detectors import get_detector
    from hallugraph.features import FeatureTable
    from hallugraph.metrics import choose_threshold
    from hallugraph.splits import split_groups

    if not runs:
        raise ValueError("no runs to train on")
    det = get_detector(name, **dict(params or {}))
    check_scorable(det)
    if "seed" in det.get_params() and "seed" not in (params or {}):
        det.set_params(seed=seed)  # as evaluate does
    paths = [Path(r) for r in runs]
    X = FeatureTable(paths)
    infos = [s.info for s in X.stores]
    first = infos[0]
    for p, info in zip(paths[1:], infos[1:], strict=True):
        diff = [k for k in _SAME if info.get(k) != first.get(k)]
        gen_a, gen_b = info.get("generation") or {}, first.get("generation") or {}
        if gen_a.get("template") != gen_b.get("template"):
            diff.append("generation.template")
        if diff:
            raise ValueError(
                f"run {p} differs from {paths[0]} in {', '.join(diff)}: a detector is trained "
                "on runs of one model with one prompt template"
            )
    idx: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    runs_meta = []
    offset = 0
    contexts = set()
    for p, store in zip(paths, X.stores, strict=True):
        rows = store.manifest
        if not rows:
            raise ValueError(f"run {p} has no traces")
        missing = sum("label" not in r for r in rows)
        if missing:
            raise ValueError(
                f"run {p} is not labeled ({missing} of {len(rows)} traces have no label): "
                f"run `hallugraph label {p}` first"
            )
        contexts.add(_context_of(rows, p))
        sub = X[np.arange(offset, offset + len(rows))]
        y = sub.labels
        tr, va, te = split_groups(sub.groups, seed=seed, frac=frac, labels=y)
        if len(tr) == 0 or len(np.unique(y[tr])) < 2:
            raise ValueError(f"run {p}: its train split needs both labels (0 and 1)")
        for k, v in zip(("train", "val", "test"), (tr, va, te), strict=True):
            idx[k].append(v + offset)
        runs_meta.append(
            {
                "path": str(p.resolve()),
                "dataset": store.info.get("dataset"),
                "n": len(rows),
                "n_train": int(len(tr)),
                "n_val": int(len(va)),
                "n_test": int(len(te)),
                "pct_hallucinated": round(100 * float(y.mean()), 2),
            }
        )
        offset += len(rows)
    if len(contexts) > 1:
        raise ValueError("some runs have a context and some do not: train on one kind")
    tr, va, te = (np.concatenate(idx[k]) for k in ("train", "val", "test"))
    y_all = X.labels
    det.fit(X[tr], y_all[tr])
    s_va = np.asarray(det.predict_proba(X[va]), dtype=np.float64) if len(va) else np.zeros(0)
    threshold, note = choose_threshold(y_all[va], s_va)
    val_auroc = _auroc(y_all[va], s_va)
    if refit and len(va):
        trva = np.sort(np.concatenate([tr, va]))
        det = get_detector(name, **det.get_params())
        det.fit(X[trva], y_all[trva])
    s_te = np.asarray(det.predict_proba(X[te]), dtype=np.float64) if len(te) else np.zeros(0)
    stats_read = list(det.stats_read())
    gen = dict(first.get("generation") or {})
    info = {
        "model": {
            "name": first.get("model"),
            "model_id": first.get("model_id"),
            "dtype": first.get("model_dtype", "float32"),
            "trace_dtype": first.get("dtype", "float16"),
            "fingerprint": None,
            "num_layers": first.get("num_layers"),
            "num_heads": first.get("num_heads"),
        },
        "prompt": {
            "template": gen.get("template"),
            "context": contexts.pop(),
            "prefix_tokens": _prefix_tokens(paths[0], first),
            "generation": gen,
        },
        "stats_read": stats_read,
        "statistics": statistic_versions(stats_read),
        "threshold": float(threshold),
        "threshold_rule": "max balanced accuracy on the validation split"
        + (f" ({note})" if note else ""),
        "fit": {
            "protocol": "split 60/20/20 by question per run (hallugraph.splits.split_groups)",
            "frac": list(frac),
            "seed": seed,
            "fitted_on": "train+val" if refit and len(va) else "train",
            "n_fit": int(len(tr) + (len(va) if refit else 0)),
            "validation_auroc": val_auroc,
            "test_auroc": _auroc(y_all[te], s_te),
            "n_val": int(len(va)),
            "n_test": int(len(te)),
        },
        "chosen": {k: getattr(det, k) for k in ("layer_", "sign_") if hasattr(det, k)},
        "runs": runs_meta,
        "run_info": {k: v for k, v in first.items() if k not in ("created",)},
    }
    return det, info

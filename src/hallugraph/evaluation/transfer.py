"""Across runs: transfer (fit on all of run A, score the questions of run B that A never saw)
and leave-one-dataset-out (fit on all the other runs together, minus the questions they share
with the left-out run; score the whole left-out run). Question identity is
:func:`~hallugraph.evaluation.cv.question_keys` (id or text), so ``halueval_qa`` and
``halueval_qa_tf``, which ask the same questions, never test what was trained on.
AUROC and AUPR only: a threshold set on another dataset says nothing about this one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from hallugraph.detectors.base import NotApplicable
from hallugraph.evaluation.bootstrap import metrics_with_ci, percent_positive, question_weights
from hallugraph.evaluation.cells import (
    CELL_FORMAT,
    CellError,
    CellStore,
    detector_identity,
    floats,
    rows_id,
    seed_globals,
)
from hallugraph.evaluation.cv import Run, instantiate, scores, unseen
from hallugraph.evaluation.sources import code_digest, detector_modules
from hallugraph.features import FeatureTable
from hallugraph.store.integrity import IntegrityError

log = logging.getLogger(__name__)

_NAN_CELLS = {f"{m}{x}": float("nan") for m in ("auroc", "aupr") for x in ("", "_lo", "_hi")}


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _score_cells(row: dict[str, Any], s: np.ndarray, y: np.ndarray, W: Any) -> None:
    """AUROC and AUPR of scores ``s`` (question-bootstrap CI over ``W``) against ``y``, and
    their notes, into ``row``."""
    metrics, notes = metrics_with_ci(y, s[None], None, W)
    row.update(metrics)
    row["notes"] = "; ".join(notes)


class Unseen:
    """``idx[a, b]``: indices of run ``b``'s traces whose question run ``a`` does not hold;
    ``ids[a, b]`` their digest (:func:`~hallugraph.evaluation.cells.rows_id`), ``ids[b, b]``
    that of all of run ``b``'s traces (the cells' keys)."""

    def __init__(self, runs: Sequence[Run]) -> None:
        rows = [r.table.rows for r in runs]
        self.idx = {
            (i, j): unseen(rows[j], rows[i])
            for i in range(len(runs))
            for j in range(len(runs))
            if i != j
        }
        self.ids = {
            (i, j): rows_id(runs[j].labeled[k], [rows[j][t] for t in k])
            for (i, j), k in self.idx.items()
        }
        for j, r in enumerate(runs):
            self.ids[(j, j)] = rows_id(r.labeled, rows[j])


def transfer_cell(
    runs: Sequence[Run],
    i: int,
    ident: dict[str, Any],
    seed: int,
    unseen_idx: Unseen,
    store: CellStore,
) -> tuple[Any, dict[str, Any]]:
    """The transfer cell of one detector trained on ``runs[i]``: its path and key parts."""
    targets = [
        {
            "dataset": b.name,
            "data": b.identity.get("data", ""),
            "rows": unseen_idx.ids[(i, j)],
        }
        for j, b in enumerate(runs)
        if j != i
    ]
    parts = {
        "format": CELL_FORMAT,
        "code": code_digest(detector_modules(ident)),
        "kind": "transfer",
        "detector": ident,
        "seed": seed,
        "train": runs[i].identity,
        "targets": targets,
    }
    return store.path("transfer", ident["name"], runs[i].name), parts


def _transfer_compute(
    runs: Sequence[Run], i: int, name: str, spec: Any, seed: int, unseen_idx: Unseen
) -> dict[str, Any]:
    """Fit on all of ``runs[i]``, score every other run's unseen answers. What failed is in the
    result (``partial``: the cell is not kept, it is tried again next time)."""
    a = runs[i]
    res: dict[str, Any] = {"targets": {}}
    try:
        seed_globals(seed)
        det = instantiate(spec, seed).fit(a.table, a.y)
    except NotApplicable as err:
        return {"partial": True, "skip": str(err)}
    except IntegrityError:
        raise
    except Exception as err:  # noqa: BLE001 - one detector must not stop the evaluation
        return {"partial": True, "fit_error": f"not fitted on {a.name}: {_err(err)}"}
    for j, b in enumerate(runs):
        idx = unseen_idx.idx[(i, j)] if j != i else None
        if idx is None or not len(idx):
            continue
        try:
            res["targets"][b.name] = {"scores": scores(det, b.table[idx])}
        except NotApplicable:
            res["targets"][b.name], res["partial"] = {"skip": True}, True
        except IntegrityError:
            raise
        except Exception as err:  # noqa: BLE001
            log.warning("transfer of %s %s -> %s failed: %s", name, a.name, b.name, err)
            res["targets"][b.name], res["partial"] = {"error": _err(err)}, True
    return res


def _decode_scores(lengths: dict[str, int]) -> Any:
    def decode(res: dict[str, Any]) -> dict[str, Any]:
        for ds, cell in res.get("targets", {}).items():
            if "scores" in cell:
                if ds not in lengths:
                    raise CellError(f"scores of an unknown dataset {ds!r}")
                cell["scores"] = floats(cell["scores"], lengths[ds], f"scores on {ds}")
        if "scores" in res:
            res["scores"] = floats(res["scores"], lengths[""], "scores")
        return res

    return decode


def transfer_rows(
    runs: Sequence[Run],
    name: str,
    spec: Any,
    seed: int,
    n_boot: int,
    unseen_idx: Unseen,
    store: CellStore | None = None,
) -> list[dict[str, Any]]:
    """Off-diagonal transfer cells of one detector (the diagonal is the in-run CV result)."""
    store = store if store is not None else CellStore(None)
    ident = detector_identity(name, instantiate(spec, seed))
    out = []
    for i, a in enumerate(runs):
        path, parts = transfer_cell(runs, i, ident, seed, unseen_idx, store)
        lengths = {b.name: len(unseen_idx.idx[(i, j)]) for j, b in enumerate(runs) if j != i}
        res = store.get(
            path,
            parts,
            lambda i=i: _transfer_compute(runs, i, name, spec, seed, unseen_idx),
            _decode_scores(lengths),
        )
        if "skip" in res:
            continue
        error = str(res.get("fit_error", ""))
        for j, b in enumerate(runs):
            if i == j:
                continue
            idx = unseen_idx.idx[(i, j)]
            row: dict[str, Any] = {
                "detector": name,
                "train_dataset": a.name,
                "test_dataset": b.name,
                "n_test": int(len(idx)),
                "n_shared_left_out": int(len(b.y) - len(idx)),
                "pct_halluc_test": percent_positive(b.y[idx]),
                **_NAN_CELLS,
                "error": error,
                "notes": "",
            }
            cell = res["targets"].get(b.name, {})
            if not error and not len(idx):
                row["notes"] = f"every question of {b.name} is in {a.name}: nothing to test"
            elif not error:
                if cell.get("skip"):
                    continue
                if "error" in cell:
                    row["error"] = str(cell["error"])
                else:
                    W = question_weights(b.groups[idx], n_boot, seed)
                    _score_cells(row, cell["scores"], b.y[idx], W)
            out.append(row)
    return out


def lodo_cell(
    runs: Sequence[Run],
    j: int,
    ident: dict[str, Any],
    seed: int,
    unseen_idx: Unseen,
    store: CellStore,
) -> tuple[Any, dict[str, Any]]:
    """The leave-one-dataset-out cell of one detector leaving ``runs[j]`` out."""
    train = [
        {
            "dataset": runs[i].name,
            **runs[i].identity,
            "rows": unseen_idx.ids[(j, i)],
        }
        for i in range(len(runs))
        if i != j
    ]
    left = runs[j]
    parts = {
        "format": CELL_FORMAT,
        "code": code_digest(detector_modules(ident)),
        "kind": "lodo",
        "detector": ident,
        "seed": seed,
        "train": train,
        "test": {
            "data": left.identity.get("data", ""),
            "rows": unseen_idx.ids[(j, j)],
        },
    }
    return store.path("lodo", ident["name"], left.name), parts


def _lodo_compute(
    runs: Sequence[Run], j: int, name: str, spec: Any, seed: int, unseen_idx: Unseen
) -> dict[str, Any]:
    left = runs[j]
    others = [i for i in range(len(runs)) if i != j]
    keep = [unseen_idx.idx[(j, i)] for i in others]
    try:
        union = FeatureTable([runs[i].path for i in others])
        offsets = np.cumsum([0] + [len(s) for s in union.stores])
        idx = np.concatenate(
            [
                offsets[n] + runs[i].labeled[k]
                for n, (i, k) in enumerate(zip(others, keep, strict=True))
            ]
        )
        y = np.concatenate([runs[i].y[k] for i, k in zip(others, keep, strict=True)])
        if len(np.unique(y)) < 2:
            return {"one_class": True}
        seed_globals(seed)
        det = instantiate(spec, seed).fit(union[idx], y)
        return {"scores": scores(det, left.table)}
    except NotApplicable as err:
        return {"partial": True, "skip": str(err)}
    except IntegrityError:
        raise
    except Exception as err:  # noqa: BLE001
        log.warning("leave-one-out of %s on %s failed: %s", name, left.name, err)
        return {"partial": True, "error": _err(err)}


def lodo_rows(
    runs: Sequence[Run],
    name: str,
    spec: Any,
    seed: int,
    unseen_idx: Unseen,
    store: CellStore | None = None,
) -> list[dict[str, Any]]:
    """Leave-one-dataset-out cells of one detector: per run, fitted on the other runs
    together (without the questions they share with it), scored on the whole run with the
    run's question-bootstrap CI."""
    store = store if store is not None else CellStore(None)
    out: list[dict[str, Any]] = []
    if len(runs) < 2:
        return out
    ident = detector_identity(name, instantiate(spec, seed))
    for j, left in enumerate(runs):
        others = [i for i in range(len(runs)) if i != j]
        keep = [unseen_idx.idx[(j, i)] for i in others]
        row: dict[str, Any] = {
            "detector": name,
            "test_dataset": left.name,
            "train_datasets": [runs[i].name for i in others],
            "n_train": int(sum(len(k) for k in keep)),
            "n_shared_left_out": int(
                sum(len(runs[i].y) - len(k) for i, k in zip(others, keep, strict=True))
            ),
            "n_test": int(len(left.y)),
            **_NAN_CELLS,
            "error": "",
            "notes": "",
        }
        path, parts = lodo_cell(runs, j, ident, seed, unseen_idx, store)
        res = store.get(
            path,
            parts,
            lambda j=j: _lodo_compute(runs, j, name, spec, seed, unseen_idx),
            _decode_scores({"": len(left.y)}),
        )
        if "skip" in res:
            continue
        if res.get("one_class"):
            row["notes"] = "the other runs hold one class only: nothing to fit"
        elif "error" in res:
            row["error"] = str(res["error"])
        else:
            _score_cells(row, res["scores"], left.y, left.W)
        out.append(row)
    return out

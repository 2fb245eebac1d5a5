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

from hallugraph.detectors import NotApplicable
from hallugraph.evaluation.bootstrap import metrics_with_ci, percent_positive, question_weights
from hallugraph.evaluation.cv import Run, instantiate, scores, unseen
from hallugraph.features import FeatureTable
from hallugraph.store.integrity import IntegrityError

log = logging.getLogger(__name__)

_NAN_CELLS = {f"{m}{x}": float("nan") for m in ("auroc", "aupr") for x in ("", "_lo", "_hi")}


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _score_cells(row: dict[str, Any], det: Any, table: Any, y: np.ndarray, W: Any) -> None:
    """The fitted ``det``'s AUROC and AUPR (question-bootstrap CI over ``W``) on ``table``
    against ``y``, and their notes, into ``row``."""
    s = scores(det, table)
    metrics, notes = metrics_with_ci(y, s[None], None, W)
    row.update(metrics)
    row["notes"] = "; ".join(notes)


class Unseen:
    """``[a][b]``: indices of run ``b``'s traces whose question run ``a`` does not hold."""

    def __init__(self, runs: Sequence[Run]) -> None:
        rows = [r.table.rows for r in runs]
        self.idx = {
            (i, j): unseen(rows[j], rows[i])
            for i in range(len(runs))
            for j in range(len(runs))
            if i != j
        }


def transfer_rows(
    runs: Sequence[Run],
    name: str,
    spec: Any,
    seed: int,
    n_boot: int,
    unseen_idx: Unseen,
) -> list[dict[str, Any]]:
    """Off-diagonal transfer cells of one detector (the diagonal is the in-run CV result)."""
    out = []
    for i, a in enumerate(runs):
        det, error = None, ""
        try:
            det = instantiate(spec, seed).fit(a.table, a.y)
        except NotApplicable:
            continue
        except IntegrityError:
            raise
        except Exception as err:  # noqa: BLE001 - one detector must not stop the evaluation
            error = f"not fitted on {a.name}: {_err(err)}"
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
            if not error and not len(idx):
                row["notes"] = f"every question of {b.name} is in {a.name}: nothing to test"
            elif not error:
                try:
                    W = question_weights(b.groups[idx], n_boot, seed)
                    _score_cells(row, det, b.table[idx], b.y[idx], W)
                except NotApplicable:
                    continue
                except IntegrityError:
                    raise
                except Exception as err:  # noqa: BLE001
                    log.warning("transfer of %s %s -> %s failed: %s", name, a.name, b.name, err)
                    row["error"] = _err(err)
            out.append(row)
    return out


def lodo_rows(
    runs: Sequence[Run],
    name: str,
    spec: Any,
    seed: int,
    unseen_idx: Unseen,
) -> list[dict[str, Any]]:
    """Leave-one-dataset-out cells of one detector: per run, fitted on the other runs
    together (without the questions they share with it), scored on the whole run with the
    run's question-bootstrap CI."""
    out = []
    if len(runs) < 2:
        return out
    for j, left in enumerate(runs):
        others = [i for i in range(len(runs)) if i != j]
        row: dict[str, Any] = {
            "detector": name,
            "test_dataset": left.name,
            "train_datasets": [runs[i].name for i in others],
            "n_train": 0,
            "n_shared_left_out": 0,
            "n_test": int(len(left.y)),
            **_NAN_CELLS,
            "error": "",
            "notes": "",
        }
        try:
            keep = [unseen_idx.idx[(j, i)] for i in others]
            row["n_shared_left_out"] = int(
                sum(len(runs[i].y) - len(k) for i, k in zip(others, keep, strict=True))
            )
            union = FeatureTable([runs[i].path for i in others])
            offsets = np.cumsum([0] + [len(s) for s in union.stores])
            idx = np.concatenate(
                [
                    offsets[n] + runs[i].labeled[k]
                    for n, (i, k) in enumerate(zip(others, keep, strict=True))
                ]
            )
            y = np.concatenate([runs[i].y[k] for i, k in zip(others, keep, strict=True)])
            row["n_train"] = int(len(y))
            if len(np.unique(y)) < 2:
                row["notes"] = "the other runs hold one class only: nothing to fit"
                out.append(row)
                continue
            det = instantiate(spec, seed).fit(union[idx], y)
            _score_cells(row, det, left.table, left.y, left.W)
        except NotApplicable:
            continue
        except IntegrityError:
            raise
        except Exception as err:  # noqa: BLE001
            log.warning("leave-one-out of %s on %s failed: %s", name, left.name, err)
            row["error"] = _err(err)
        out.append(row)
    return out

"""The missing cells of an evaluation computed by worker processes
(``evaluate(..., processes=N)``, ``hallugraph evaluate --processes N``).

The parent plans every cell (:mod:`hallugraph.evaluation.cells`), hands those not computed yet to
``N`` *spawned* processes and advances its progress bar as they finish. Each worker loads the
runs once (the same :func:`~hallugraph.evaluation.cv.load_runs` call as the parent), computes
one cell at a time through a :class:`~hallugraph.evaluation.cells.CellStore` on the same
folder, and writes the cell's file (atomically) itself. The parent then goes through the
evaluation exactly as with one process, reading every cell: the outputs are the files of a
one-process evaluation (every cell is computed single-threaded whoever computes it,
:func:`~hallugraph.evaluation.cells.single_threaded`).

Only successful cells come back from the workers. A cell that failed in a worker (a detector's
error, ``NotApplicable``, a transfer or leave-one-out result with a failed part) is not kept,
so the parent meets it again in its pass and computes it itself, as a resumed evaluation
would: the error rows are the same as with one process (at the cost of fitting a failing cell
twice). A damaged run file (:class:`~hallugraph.store.integrity.IntegrityError`) in a worker
stops the evaluation as it does in the parent. A worker that dies (killed, out of memory)
stops the evaluation with :class:`WorkerCrash` naming the cells that were running; every cell
finished before is on disk, and the same command resumes.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallugraph.detectors.registry import all_detectors
from hallugraph.evaluation.cells import CellStore, detector_identity, digest
from hallugraph.evaluation.cv import Run, _fold, cv_cells, instantiate, load_runs
from hallugraph.evaluation.transfer import (
    Unseen,
    _err,
    _lodo_compute,
    _transfer_compute,
    lodo_cell,
    transfer_cell,
)
from hallugraph.store.integrity import IntegrityError

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class WorkerCrash(RuntimeError):
    """A worker process died (killed, out of memory) while computing cells."""


@dataclass(frozen=True)
class Setup:
    """What a worker needs to rebuild the parent's evaluation (picklable)."""

    runs: tuple[str, ...]
    specs: tuple[tuple[str, Any], ...]
    seed: int
    folds: int
    repeats: int
    bootstrap: int
    cells: str
    several: bool


@dataclass(frozen=True)
class Task:
    """One missing cell: ``("cv", run, detector, repeat, fold)``, ``("transfer", detector,
    train run)`` or ``("lodo", detector, left-out run)`` (indices), its file and key digest."""

    what: tuple[Any, ...]
    path: str
    key: str


def cell_of(
    what: tuple[Any, ...],
    loaded: Sequence[Run],
    specs: Sequence[tuple[str, Any]],
    seed: int,
    unseen_idx: Unseen | None,
    store: CellStore,
) -> tuple[Path | None, dict[str, Any], Callable[[], dict[str, Any]]]:
    """The path, key parts and computation of the cell ``what`` (see :class:`Task`)."""
    kind = what[0]
    if kind == "cv":
        _, ri, di, r, k = what
        name, spec = specs[di]
        run = loaded[ri]
        ident = detector_identity(name, instantiate(spec, seed))
        for rr, kk, te, path, parts in cv_cells(run, ident, seed, store):
            if (rr, kk) == (r, k):
                return path, parts, functools.partial(_fold, run, spec, seed, r, k, te)
        raise ValueError(f"no fold {r}/{k} in {run.name}")
    if unseen_idx is None:
        raise ValueError(f"a {kind} cell needs several runs")
    _, di, i = what
    name, spec = specs[di]
    ident = detector_identity(name, instantiate(spec, seed))
    cell, compute = (
        (transfer_cell, _transfer_compute) if kind == "transfer" else (lodo_cell, _lodo_compute)
    )
    path, parts = cell(loaded, i, ident, seed, unseen_idx, store)
    return path, parts, functools.partial(compute, loaded, i, name, spec, seed, unseen_idx)


_STATE: dict[str, Any] = {}


def _init(setup: Setup) -> None:
    """Worker start: one thread per library, every built-in detector registered (a spawned
    process holds only the modules its tasks' unpickling imported: without this, a fusion's
    base from another module was unknown there and silently dropped), the runs loaded once."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    all_detectors()
    loaded = load_runs(
        list(setup.runs),
        seed=setup.seed,
        n_folds=setup.folds,
        n_repeats=setup.repeats,
        n_boot=setup.bootstrap,
        warnings=[],
    )
    _STATE.update(
        setup=setup,
        loaded=loaded,
        unseen=Unseen(loaded) if setup.several else None,
        store=CellStore(Path(setup.cells)),
    )


def _work(task: Task) -> dict[str, Any]:
    """Compute one cell in a worker: ``{"ok"}`` (written), or ``{"failed": why}`` (not kept:
    the parent computes it again)."""
    setup: Setup = _STATE["setup"]
    store: CellStore = _STATE["store"]
    path, parts, compute = cell_of(
        task.what, _STATE["loaded"], setup.specs, setup.seed, _STATE["unseen"], store
    )
    if digest(parts) != task.key:
        raise ValueError(f"cell {path}: the worker's key differs from the parent's")
    before = dict(store.counts)
    try:
        res = store.get(path, parts, compute, lambda res: res)
    except IntegrityError:
        raise
    except Exception as err:  # noqa: BLE001 - the parent meets it again and reports it
        return {"failed": _err(err)}
    counts = {k: store.counts[k] - before[k] for k in ("stale", "damaged")}
    return {"failed": "partial"} if res.get("partial") else {"ok": True, "counts": counts}


def compute_cells(
    setup: Setup, tasks: Sequence[Task], processes: int, store: CellStore, bar: Any
) -> None:
    """Compute ``tasks`` in ``processes`` spawned workers; every cell they write is recorded
    in ``store`` (:meth:`CellStore.computed_elsewhere`) and advances ``bar``. Raises
    :class:`WorkerCrash` if a worker dies, what a worker's cell raised if it is an
    :class:`~hallugraph.store.integrity.IntegrityError`."""
    if not tasks:
        return
    ctx = multiprocessing.get_context("spawn")
    n = max(1, min(processes, len(tasks)))
    if bar is not None:
        bar.set_postfix_str(f"{len(tasks)} cells in {n} worker processes")
    pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init, initargs=(setup,))
    try:
        pending: dict[Future[dict[str, Any]], Task] = {pool.submit(_work, t): t for t in tasks}
        running: list[Task] = []
        while pending:
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                try:
                    out = fut.result()
                except BrokenProcessPool:
                    names = ", ".join(t.path for t in running) or "(unknown)"
                    raise WorkerCrash(
                        f"a worker process died (killed? out of memory?) while computing one "
                        f"of: {names}; the {len(store.elsewhere)} cells finished are kept in "
                        f"{store.root}: run the same command again to resume (with fewer "
                        "--processes if memory ran out)"
                    ) from None
                if out.get("ok"):
                    store.computed_elsewhere(Path(task.path), out["counts"])
            running = [t for f, t in pending.items() if f.running()]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def tasks_of(missing: Sequence[tuple[tuple[Any, ...], Path | None, dict[str, Any]]]) -> list[Task]:
    """The :class:`Task` of each missing cell ``(what, path, key parts)`` (kept cells only)."""
    return [Task(w, str(p), digest(parts)) for w, p, parts in missing if p is not None]

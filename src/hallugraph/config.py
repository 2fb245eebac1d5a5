"""Where things live (the cache, the benchmark data, the runs) and how the process runs (the
CPU's name, glibc's heap)."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Root of hallugraph's cache (converted checkpoints, shared statistics).

    ``$HALLUGRAPH_CACHE`` overrides the default ``~/.cache/hallugraph``.
    """
    root = os.environ.get("HALLUGRAPH_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "hallugraph"
    return path


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the benchmark data (``triviaqa/``, ``truthfulqa/``, ``halueval_qa/``).

    Order: the explicit ``override`` (the CLI's ``--data-dir``), ``$HALLUGRAPH_DATA_DIR``,
    ``../shared/data`` beside the checkout, ``../shared/data`` beside the working directory.
    """
    if override:
        return Path(override).expanduser()
    env = os.environ.get("HALLUGRAPH_DATA_DIR")
    if env:
        return Path(env).expanduser()
    for candidate in (_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return _REPO_ROOT.parent / "shared" / "data"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the figures benchmarks and run manifests
    record; ``platform``'s guess where that file does not exist."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


#: glibc's ``M_MMAP_THRESHOLD`` for extraction, bytes (``$HALLUGRAPH_MMAP_THRESHOLD``; 0 leaves
#: glibc's own, which rises to 32 MB as large blocks are freed): a block this large or larger
#: is mapped for itself and unmapped when freed, never carved from the heap (issue 16,
#: docs/BENCHMARKS.md "A fixed mmap threshold").
MMAP_THRESHOLD = 128 * 1024
#: the variable glibc reads before ``main``: set from a process's start, the threshold also
#: covers what Python's start-up and its imports allocate (``mallopt`` later cannot).
MALLOC_ENV = "MALLOC_MMAP_THRESHOLD_"
_RESTARTED = "HALLUGRAPH_HEAP_RESTARTED"  # set for the restarted process only
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def mmap_threshold() -> int:
    """The threshold asked for: ``$HALLUGRAPH_MMAP_THRESHOLD`` (bytes; 0 = glibc's own), else
    :data:`MMAP_THRESHOLD`. A value that is not a whole number of bytes is a ``ValueError``
    naming the variable."""
    raw = os.environ.get("HALLUGRAPH_MMAP_THRESHOLD", str(MMAP_THRESHOLD)).strip()
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"HALLUGRAPH_MMAP_THRESHOLD must be a whole number of bytes, not {raw!r}"
        ) from None
    if value < 0:
        raise ValueError(f"HALLUGRAPH_MMAP_THRESHOLD must not be negative, not {value}")
    return value


def heap_env() -> dict[str, str]:
    """The environment a new process needs to start with a fixed mmap threshold:
    ``{"MALLOC_MMAP_THRESHOLD_": "<bytes>"}``, or ``{}`` where there is no glibc or the
    threshold is 0. A ``MALLOC_MMAP_THRESHOLD_`` already set by the user is kept as it is."""
    threshold = mmap_threshold()
    if threshold <= 0 or glibc() is None:
        return {}
    return {MALLOC_ENV: os.environ.get(MALLOC_ENV) or str(threshold)}


def restart_with_bounded_heap(argv: Sequence[str] | None = None) -> None:
    """Replace this process by the same command (``sys.orig_argv``) started with
    :func:`heap_env` in its environment, unless it already has it (then return): glibc reads
    the variable before ``main``, so only a fresh start reaches the allocations of Python's
    start-up and imports. Costs one more interpreter start (~0.1 s); used by ``hallugraph
    extract`` / ``run`` / ``merge`` (docs/EXTRACTION.md, "Units of work"). The restarted
    process removes the variable from its environment (glibc has read it), so that the
    processes it starts do not inherit it; a variable the user set is left alone."""
    if os.environ.pop(_RESTARTED, None) == "1":
        # glibc has read it: the processes this one starts (the evaluation's workers of
        # ``hallugraph run``) must not pay the threshold's price (page faults: 1,080 s of
        # system time in ``make run`` when they inherited it); Ray workers get it explicitly
        os.environ.pop(MALLOC_ENV, None)
        return
    env = heap_env()
    if not env or os.environ.get(MALLOC_ENV):
        return
    argv = list(sys.orig_argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, {**os.environ, **env, _RESTARTED: "1"})


def bound_heap(threshold: int | None = None) -> bool:
    """Fix glibc's mmap threshold for the rest of this process with ``mallopt`` (``False``
    where there is no glibc, or for a threshold of 0: glibc's default kept). Later than
    :func:`restart_with_bounded_heap` (what was freed into the heap before stays there), for
    processes that cannot be restarted (a Python session calling the extraction).

    By default glibc raises the threshold each time a mapped block is freed, up to 32 MB, so
    the tensors of an extraction (attention maps, hidden states, logits: 0.1-30 MB) soon come
    from the heap; freed there, they leave pages that neither the next unit reuses in full
    nor the worker's ``malloc_trim`` can return while a live block sits among them, and a
    long run's peak crept up with its length. A fixed threshold keeps every block of at
    least that size out of the heap.
    """
    if threshold is None:
        threshold = mmap_threshold()
    libc = glibc()
    if libc is None or threshold <= 0:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))


@functools.cache
def glibc() -> Any:
    """The C library when it is glibc (``malloc_trim`` and ``mallopt``), else ``None``."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both exist: glibc
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None
    return libc

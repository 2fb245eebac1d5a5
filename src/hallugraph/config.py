"""Where things live: the cache, the benchmark data, the runs."""

from __future__ import annotations

import os
import platform
from pathlib import Path

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

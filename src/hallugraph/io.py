"""The one place that writes files: atomic writers (PNG figures included) and JSON helpers.

Every output of hallugraph goes through :func:`atomic_write_bytes` (directly or via the text,
JSON and safetensors wrappers): the data goes to a temporary file in the target's folder (a
name of its own per process and call), is flushed and fsynced, then renamed over the target.
A kill at any point leaves either the old file or the new one, never a mix or a 0-byte file;
a leftover temporary file matches :data:`TMP_GLOB` and can be cleaned by :func:`clean_tmp`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TMP_GLOB",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_safetensors",
    "atomic_write_text",
    "clean_tmp",
    "jsonable",
    "save_png",
]

#: Temporary files written by this module are named ``.<target>.<pid>.<n>.tmp``.
TMP_GLOB = ".*.tmp"
_counter = itertools.count()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{next(_counter)}.tmp")


def _atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary file (and fsyncs it), which is then renamed over
    ``path``; on any error, the temporary file is removed and ``path`` is left as it was."""
    target = Path(path)
    tmp = _tmp_name(target)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); returns the path."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return _atomic(path, write)


def atomic_write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """numpy arrays as a safetensors file, atomically like :func:`atomic_write_bytes`, but
    streamed by ``safetensors`` to the temporary file instead of serialized in memory first (a
    shard of several GB would otherwise be held twice)."""
    from safetensors.numpy import save_file

    def write(tmp: Path) -> None:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())

    return _atomic(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text through :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_png(fig: Any, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """A matplotlib figure, laid out (``tight_layout``), as a PNG at ``path`` through
    :func:`atomic_write_bytes`; the folder is made. The figure stays open: closing it is the
    caller's (``plt.close`` in a ``finally``)."""
    from io import BytesIO

    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(target, buf.getvalue())


def jsonable(v: Any) -> Any:
    """``v`` with numpy scalars/arrays as Python values, paths as strings and non-finite floats
    as ``None`` (strict JSON has no NaN)."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """``obj`` (made :func:`jsonable`) as strict JSON + newline, atomically."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def clean_tmp(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove this module's leftover temporary files directly under ``folder``; returns them."""
    removed = []
    for p in Path(folder).glob(TMP_GLOB):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed

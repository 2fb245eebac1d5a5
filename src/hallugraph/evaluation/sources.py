"""The code an evaluation cell's numbers depend on, for its key
(:mod:`hallugraph.evaluation.cells`): the evaluation's own sources, the statistics and the
store reader, and per detector the module it lives in with everything of ours it imports,
read from the sources (so an edit to one detector recomputes its cells only)."""

from __future__ import annotations

import ast
import functools
import hashlib
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

_CORE = (
    "features",
    "store",
    "splits.py",
    "metrics.py",
    "evaluation/cv.py",
    "evaluation/cells.py",
    "evaluation/sources.py",
    "evaluation/transfer.py",
)
"""The code in every cell's key: the statistics, the store reader and the evaluation's own
code (a detector's code is added per detector: :func:`code_digest`)."""
_LIBS = ("numpy", "scipy", "scikit-learn", "torch")

_PACKAGE = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path | None:
    """The source file of ``hallugraph.…`` module ``name`` (``None``: not a module of ours)."""
    parts = name.split(".")
    if parts[0] != "hallugraph":
        return None
    base = _PACKAGE.joinpath(*parts[1:])
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _packages(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``: the packages whose ``__init__`` importing it runs."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.cache
def _imports(path: Path, name: str) -> tuple[tuple[str, bool], ...]:
    """The ``hallugraph`` modules a source file imports anywhere (top level or inside a
    function; relative imports resolved), each with whether its own code is used (``False``
    for a package only passed through: ``from pkg import submodule``)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_bytes(), filename=str(path))
    out: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.name] = True
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names]
            modules = [m for m in subs if _module_file(m) is not None]
            out[mod] = out.get(mod, False) or len(modules) < len(subs)
            for m in modules:
                out[m] = True
    return tuple((m, used) for m, used in out.items() if m.startswith("hallugraph"))


@functools.cache
def module_sources(name: str) -> tuple[Path, ...]:
    """The source files a module's code runs from: its own and those of every ``hallugraph``
    module it imports, transitively (found by reading the sources, so a module imported only
    inside a function counts too). The ``__init__`` of a package that is only passed through
    (``a`` and ``a.b`` for ``import a.b.c``; ``from a import submodule``) counts as a file,
    but what it imports does not: it runs, but the module does not use it. A module outside
    the package (a detector defined by a user) counts its own file where it has one."""
    seen: dict[str, Path] = {}
    followed: set[str] = set()
    todo: list[tuple[str, bool]] = [(name, True), *((p, False) for p in _packages(name))]
    while todo:
        mod, used = todo.pop()
        if mod in followed or (mod in seen and not used):
            continue
        f = seen.get(mod) or _module_file(mod)
        if f is None and not mod.startswith("hallugraph"):
            f = Path(getattr(sys.modules.get(mod), "__file__", "") or "")
            f = f if f.suffix == ".py" and f.is_file() else None
        if f is None:
            continue
        seen[mod] = f
        if not used:
            continue
        followed.add(mod)
        for m, m_used in _imports(f, mod):
            todo.append((m, m_used))
            todo.extend((p, False) for p in _packages(m))
    return tuple(sorted(set(seen.values())))


def code_digest(modules: Sequence[str] = ()) -> dict[str, str]:
    """The code a cell's numbers depend on: the SHA-256 of the evaluation's own sources
    (:data:`_CORE`) and of the sources ``modules`` run from (:func:`module_sources`: a
    detector's module, and what it imports), and the versions of the numerical libraries. A
    change in one detector's code recomputes that detector's cells only (and those of a
    fusion over it); a change in the evaluation, the statistics or the store reader every
    cell that reads them."""
    files: set[Path] = set()
    for part in _CORE:
        p = _PACKAGE / part
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            rel = f.relative_to(_PACKAGE).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            files.update(module_sources(".".join(("hallugraph", *parts))))
    for m in modules:
        files.update(module_sources(m))
    h = hashlib.sha256()
    for f in sorted(files):
        rel = f.relative_to(_PACKAGE) if f.is_relative_to(_PACKAGE) else Path(f.name)
        h.update(str(rel).encode() + b"\0" + f.read_bytes() + b"\0")
    return {"sources": h.hexdigest(), **_lib_versions()}


@functools.cache
def _lib_versions() -> dict[str, str]:
    out = {}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = ""
    return out


def detector_modules(ident: dict[str, Any]) -> tuple[str, ...]:
    """The modules a detector's cells depend on (:func:`detector_identity`'s ``ident``): its
    class's module and, for a detector composed of others by name (a ``bases`` parameter:
    the fusion), their modules."""
    mods = [ident["class"].rsplit(".", 1)[0]]
    bases = ident.get("params", {}).get("bases")
    if isinstance(bases, list | tuple) and bases:
        from hallugraph.detectors.base import registered_detectors

        reg = registered_detectors()
        unknown = [b for b in bases if b not in reg]
        if unknown:  # never a key that leaves a base's code out
            raise KeyError(f"{ident['name']}: base detector(s) {unknown} are not registered")
        mods.extend(reg[b].__module__ for b in bases)
    return tuple(dict.fromkeys(mods))

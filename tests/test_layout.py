"""The package's shape, checked by parsing every module's imports (nothing is imported).

* no import cycle among ``hallugraph`` modules, counting imports inside functions too;
* no import from a later stage into an earlier one, in the order of :data:`STAGES` (the data's
  path: data -> extract -> store -> labels -> features -> detectors -> evaluation, then the
  analyses and applications, the command line at the top);
* no module over :data:`MAX_LINES` lines.

``HALLUGRAPH_LAYOUT_SRC=/path/to/src pytest tests/test_layout.py`` checks another checkout.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

SRC = Path(os.environ.get("HALLUGRAPH_LAYOUT_SRC", Path(__file__).parents[1] / "src"))
MAX_LINES = 400

#: Known modules over MAX_LINES: path -> lines they must not grow past (and why they are here).
KNOWN_LONG = {
    # owned by the transcoder work (issue 12), which trims it; not edited by the layout change
    "hallugraph/attribution/transcoders/train.py": 405,
}

#: Stages, earliest first: a module may import from its own stage and earlier ones only. A
#: module's stage is that of the longest prefix below that names it (``hallugraph`` alone is
#: the package's ``__init__``, the public API, not a prefix).
STAGES: list[tuple[str, ...]] = [
    # infrastructure every stage may use
    (
        "hallugraph.config",
        "hallugraph.io",
        "hallugraph.models",
        "hallugraph.metrics",
        "hallugraph.splits",
    ),
    ("hallugraph.data", "hallugraph.prompts"),
    ("hallugraph.extract",),
    ("hallugraph.store",),
    ("hallugraph.labels",),
    ("hallugraph.features",),
    ("hallugraph.detectors",),
    # writes runs: extract -> store (-> every statistic the detectors read, when the raw
    # tensors are not kept)
    ("hallugraph.pipeline",),
    ("hallugraph.evaluation",),
    ("hallugraph.graphs",),
    ("hallugraph.attribution",),
    ("hallugraph.scoring",),
    ("hallugraph.viewer",),
    # the command line and the public API (lazy imports of everything above)
    ("hallugraph.cli", "hallugraph.__main__", "hallugraph"),
]


def module_files(src: Path = SRC) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package."""
    out = {}
    for path in sorted((src / "hallugraph").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The ``hallugraph`` modules ``name`` imports anywhere in its file (functions included)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import hallugraph.a.b.c` of a name: its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = module_files(src)
    names = set(files)
    return {n: imports_of(n, p, names) for n, p in files.items()}


def stage_of(module: str) -> int:
    best, stage = -1, -1
    for i, prefixes in enumerate(STAGES):
        for p in prefixes:
            inside = module == p or (module.startswith(p + ".") and p != "hallugraph")
            if inside and len(p) > best:
                best, stage = len(p), i
    return stage


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def backward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        for t in sorted(targets):
            if stage_of(t) > stage_of(mod):
                bad.append(f"{mod} (stage {stage_of(mod)}) imports {t} (stage {stage_of(t)})")
    return bad


def long_modules(src: Path = SRC) -> list[str]:
    bad = []
    for path in sorted((src / "hallugraph").rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > KNOWN_LONG.get(rel, MAX_LINES):
            bad.append(f"{rel}: {n} lines")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_stage(graph):
    assert [m for m in graph if stage_of(m) < 0] == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_imports_point_from_later_stages_to_earlier_ones(graph):
    assert backward_imports(graph) == []


def test_no_module_over_400_lines():
    assert long_modules() == []


def test_the_checks_catch_what_they_check():
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(toy) == [["a", "b", "c"]]
    assert stage_of("hallugraph.store.codec") < stage_of("hallugraph.features.cache")
    assert stage_of("hallugraph") == stage_of("hallugraph.cli") == len(STAGES) - 1
    assert stage_of("hallugraph.somewhere_new") == -1  # a new top-level module needs a stage
    assert backward_imports({"hallugraph.store.reader": {"hallugraph.models"}}) == []
    assert backward_imports({"hallugraph.store.writer": {"hallugraph.features"}}) != []

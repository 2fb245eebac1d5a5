"""Nothing the viewer ships loads a script or a style from the web: every packaged template and
static file is searched for http(s):// (or protocol-relative //host) script and style
sources; the vendored d3 comes with its licence."""

from __future__ import annotations

import re
from pathlib import Path

import hallugraph.viewer as viewer

ROOT = Path(viewer.__file__).resolve().parent
URL = r"""\s*["']?\s*(?:https?:)?//"""
PATTERNS = [
    re.compile(r"<script\b[^>]*\bsrc\s*=" + URL, re.I),  # <script src="https://...">
    re.compile(r"<link\b[^>]*\bhref\s*=" + URL, re.I),  # <link rel=stylesheet href="//...">
    re.compile(r"@import\s+(?:url\()?" + URL, re.I),  # CSS @import
    re.compile(r"url\(" + URL, re.I),  # CSS url(https://...)
    re.compile(r"""\bimport\s*(?:\(|[^;'"]*\bfrom)\s*["'](?:https?:)?//""", re.I),  # ES modules
    re.compile(r"""importScripts\(\s*["'](?:https?:)?//""", re.I),
    re.compile(r"""\.(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I),  # el.src = "https://..."
    re.compile(r"""fetch\(\s*["'](?:https?:)?//""", re.I),
]


def remote_sources(text: str) -> list[str]:
    return [m.group(0) for p in PATTERNS for m in p.finditer(text)]


def shipped_files() -> list[Path]:
    return sorted(
        p
        for d in ("static", "templates")
        for p in (ROOT / d).rglob("*")
        if p.is_file() and p.suffix in (".html", ".js", ".css", ".svg", ".mjs")
    )


def test_the_pattern_catches_remote_sources():
    for bad in (
        '<script src="https://unpkg.com/dagre@0.8.5/dist/dagre.min.js"></script>',
        "<link rel='stylesheet' href='http://example.org/a.css'>",
        '<script type="module" src="//cdn.example/x.js">',
        "@import url('https://fonts.googleapis.com/css?family=Inter');",
        'import * as d3 from "https://cdn.jsdelivr.net/npm/d3@7/+esm";',
        's.src = "https://cdn.example/d3.js";',
    ):
        assert remote_sources(bad), bad
    assert not remote_sources('<script src="/static/vendor/d3/d3.min.js"></script>')
    assert not remote_sources('<svg xmlns="http://www.w3.org/2000/svg">')  # a name, no load


def test_no_packaged_file_loads_from_the_web():
    files = shipped_files()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"templates/runs.html", "static/common.js", "static/vendor/d3/d3.min.js"} <= names
    found = {p.name: remote_sources(p.read_text(encoding="utf-8")) for p in files}
    assert not {k: v for k, v in found.items() if v}


def test_every_page_uses_only_packaged_scripts_and_styles():
    for page in (ROOT / "templates").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", text)
        assert refs, page
        for ref in refs:
            assert ref.startswith("/static/"), (page.name, ref)
            assert (ROOT / ref.removeprefix("/")).is_file(), (page.name, ref)


def test_vendored_d3_has_its_licence():
    licence = (ROOT / "static" / "vendor" / "d3" / "LICENSE").read_text()
    assert "Mike Bostock" in licence and "Permission to use" in licence
    head = (ROOT / "static" / "vendor" / "d3" / "d3.min.js").read_text()[:200]
    assert "v7." in head


def test_every_static_file_is_package_data():
    """A file the pages load but the wheel leaves out would break installed copies."""
    import fnmatch
    import tomllib

    pyproject = ROOT.parents[2] / "pyproject.toml"
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"][
        "hallugraph.viewer"
    ]
    for p in (ROOT / "static").rglob("*"):
        if p.is_file():
            rel = p.relative_to(ROOT).as_posix()
            assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), (
                rel
            )
    for p in (ROOT / "templates").iterdir():
        assert any(fnmatch.fnmatch(p.relative_to(ROOT).as_posix(), g) for g in globs), p

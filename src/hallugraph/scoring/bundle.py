"""A trained detector on disk: ``detector.json`` + ``weights.safetensors``, never pickle.

``detector.json`` holds what a reader must know to use the detector on a new answer, and to
refuse when it cannot: the bundle format and the hallugraph, scikit-learn and torch versions
that wrote it; the detector (name, parameters, fitted attributes with references into the
weights file, see :meth:`hallugraph.detectors.Detector.get_state`); the statistics it reads
with their versions and parameters; the model (name, hub id, weights fingerprint, dtype) and
the prompt (template, shared prefix tokens, whether a context is expected); the threshold
chosen on validation; the training runs and their sizes. ``weights.safetensors`` holds only
arrays (scaler, PCA, logistic regression, MLP, GNN weights), and its SHA-256 is recorded in
``detector.json`` so a mismatched pair is refused.

:func:`load_bundle` checks all of it and raises :class:`BundleError` with a message naming the
file and what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.io import atomic_write_bytes, atomic_write_json

BUNDLE_FORMAT = 1
DETECTOR_JSON = "detector.json"
WEIGHTS = "weights.safetensors"


class BundleError(ValueError):
    """A detector bundle is missing, corrupt, or was made for another model or version."""


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split("+")[0].split(".")[:2])


def versions() -> dict[str, str]:
    """The versions of what computes a score: hallugraph, scikit-learn, torch, numpy."""
    import sklearn
    import torch

    from hallugraph.config import __version__

    return {
        "hallugraph": __version__,
        "scikit-learn": sklearn.__version__,
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
    }


def statistic_versions(names: list[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"version", "params"}}`` of the named statistics, as registered now."""
    from hallugraph.features import get_statistic

    out = {}
    for n in names:
        st = get_statistic(n)
        out[n] = {"version": int(st.version), "params": st.params()}
    return out


def save_bundle(path: str | os.PathLike[str], detector: Any, info: dict[str, Any]) -> Path:
    """Write ``detector`` (fitted) and ``info`` (model, prompt, threshold, runs...) to the
    folder ``path`` (created); returns it. The weights are written first, then
    ``detector.json`` with their checksum, each atomically."""
    from safetensors.numpy import save

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    arrays, state = detector.get_state()
    data = save(arrays, metadata={"format": str(BUNDLE_FORMAT), "detector": detector.name})
    meta = {
        "format": BUNDLE_FORMAT,
        "versions": versions(),
        **info,
        "detector": {
            "name": detector.name,
            "family": getattr(detector, "family", ""),
            "paper": getattr(detector, "paper", ""),
            "params": state["params"],
            "state": state,
        },
        "weights": {"file": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest()},
    }
    atomic_write_bytes(out / WEIGHTS, data)
    atomic_write_json(out / DETECTOR_JSON, meta)
    return out


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``detector.json`` of the bundle ``path``, format checked."""
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"{p} is not a detector bundle folder (train one: hallugraph train)")
    f = p / DETECTOR_JSON
    if not f.is_file():
        raise BundleError(f"{p} has no {DETECTOR_JSON}: not a detector bundle")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{f} is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise BundleError(
            f"{f} has bundle format {got!r}; this version of hallugraph reads format "
            f"{BUNDLE_FORMAT}: retrain the detector with this version (hallugraph train)"
        )
    return meta


def check_versions(meta: dict[str, Any], where: Path) -> None:
    """Refuse a bundle written by another hallugraph or scikit-learn version (major.minor),
    or whose statistics have changed since: its numbers would not be the ones it was trained
    on."""
    now = versions()
    then = meta.get("versions", {})
    for name in ("hallugraph", "scikit-learn"):
        if _major_minor(then.get(name, "?")) != _major_minor(now[name]):
            raise BundleError(
                f"{where} was written with {name} {then.get(name)}; this installation has "
                f"{now[name]}. Retrain the detector here (hallugraph train) or install "
                f"{name}=={then.get(name)}"
            )
    recorded = meta.get("statistics", {})
    current = statistic_versions(sorted(recorded))
    for name, rec in recorded.items():
        if rec != current[name]:
            raise BundleError(
                f"{where} reads statistic {name!r} version {rec.get('version')} with "
                f"{rec.get('params')}; this hallugraph computes version "
                f"{current[name]['version']} with {current[name]['params']}. Retrain the "
                "detector (hallugraph train)"
            )


def load_bundle(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """``(detector, meta)`` of the bundle ``path``, after checking format, versions and the
    weights' checksum."""
    from safetensors.numpy import load

    from hallugraph.detectors import detector_from_state
    from hallugraph.detectors.state import StateError

    p = Path(path)
    meta = read_meta(p)
    check_versions(meta, p)
    wf = p / WEIGHTS
    if not wf.is_file():
        raise BundleError(f"{p} has no {WEIGHTS}")
    data = wf.read_bytes()
    want = meta.get("weights", {}).get("sha256")
    if hashlib.sha256(data).hexdigest() != want:
        raise BundleError(
            f"{wf} does not match {DETECTOR_JSON} (checksum differs): the two files come from "
            "different trainings; copy the folder whole"
        )
    try:
        arrays = load(data)
        det = detector_from_state(arrays, meta["detector"]["state"])
    except (StateError, KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{p}: the detector cannot be restored ({err})") from err
    return det, meta

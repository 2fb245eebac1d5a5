"""Fitted state as arrays + JSON, never pickle: the encoder behind ``Detector.get_state``.

:func:`encode` turns a value into JSON, moving every numeric numpy array into ``arrays`` (name ->
array, written to safetensors by the caller) and leaving ``{"__array__": name}`` in its place.
:func:`decode` reverses it. What it accepts:

* ``None``, ``bool``, ``int``, ``str``, ``float`` (non-finite floats as ``{"__float__": "nan"}``),
  numpy scalars (dtype kept), lists, tuples (``{"__tuple__": [...]}``), dicts with string keys;
* numpy arrays of a numeric dtype (safetensors), of strings (JSON), and structured arrays (one
  safetensors tensor per field: scikit-learn's tree nodes);
* objects of scikit-learn and hallugraph classes (estimators, pipelines, tree predictors,
  dataclasses): their ``__dict__``, encoded recursively, and the class's import path.

Decoding imports only classes from the ``sklearn.`` and ``hallugraph.`` packages, builds them
without calling ``__init__`` and restores their attributes: no code named by the file runs, and
no other class can be reached. A few private attributes that only training uses and that hold
objects with no array form (random generators, the optimizer, a compiled loss object) are left
out; the loss of a gradient-boosting model is rebuilt from its fitted attributes on load.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

import numpy as np

ALLOWED_PACKAGES = ("sklearn.", "hallugraph.")

# private attributes of scikit-learn objects that prediction never reads and that have no
# array form (random generators, the optimizer's moment buffers, a Cython loss object)
_SKIP_ATTRS = frozenset(
    {
        "_random_state",
        "_feature_subsample_rng",
        "_optimizer",
        "_best_coefs",
        "_best_intercepts",
        "_loss",
        "_scorer",
    }
)

_NUMERIC_KINDS = "biuf"


class StateError(ValueError):
    """A value cannot be stored as arrays + JSON, or a stored state cannot be read back."""


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str) -> type:
    module, _, qual = path.partition(":")
    if not module.startswith(ALLOWED_PACKAGES) or not qual or "<" in qual:
        raise StateError(
            f"refusing to build class {path!r}: only scikit-learn and hallugraph classes are read"
        )
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise StateError(f"class {path!r} does not exist in this installation")
    if not isinstance(obj, type):
        raise StateError(f"{path!r} is not a class")
    return obj


def _put(arrays: dict[str, np.ndarray], key: str, a: np.ndarray) -> dict[str, Any]:
    if key in arrays:
        raise StateError(f"two arrays named {key!r}")
    if a.ndim > 1 and not a.flags.c_contiguous and all(np.diff(a.strides) > 0):
        # column-major (a Fortran array, or a row slice of one, as PCA's components_): keep
        # it column-major, since BLAS sums in another order on a row-major copy (last bits)
        arrays[key] = np.ascontiguousarray(a.T)
        return {"__array__": key, "order": "F"}
    arrays[key] = np.ascontiguousarray(a)
    return {"__array__": key}


def encode(value: Any, arrays: dict[str, np.ndarray], key: str) -> Any:
    """JSON for ``value``; its numeric arrays go into ``arrays`` under names starting with
    ``key``."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float
        if value.dtype.kind not in _NUMERIC_KINDS:
            raise StateError(f"{key}: numpy scalar of dtype {value.dtype} has no JSON form")
        return {"__np__": value.dtype.str, "value": encode(value.item(), arrays, key)}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.names:
            fields = {
                name: _put(arrays, f"{key}.{name}", value[name]) for name in value.dtype.names
            }
            descr = [[n, value.dtype.fields[n][0].str] for n in value.dtype.names]
            return {"__struct__": descr, "shape": list(value.shape), "fields": fields}
        if value.dtype.kind in _NUMERIC_KINDS:
            return _put(arrays, key, value)
        if value.dtype.kind == "U":
            return {"__strings__": value.dtype.str, "value": value.tolist()}
        raise StateError(f"{key}: arrays of dtype {value.dtype} cannot be stored without pickle")
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, arrays, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, arrays, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise StateError(f"{key}: only dicts with string keys can be stored")
        return {"__dict__": {k: encode(v, arrays, f"{key}.{k}") for k, v in value.items()}}
    cls = type(value)
    if cls.__module__.startswith(ALLOWED_PACKAGES) and hasattr(value, "__dict__"):
        if dataclasses.is_dataclass(value):
            attrs = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        else:
            attrs = {k: v for k, v in vars(value).items() if k not in _SKIP_ATTRS}
        state = {k: encode(v, arrays, f"{key}.{k}") for k, v in attrs.items()}
        return {"__object__": _class_path(cls), "state": state}
    raise StateError(
        f"{key}: a {cls.__module__}.{cls.__qualname__} cannot be stored as arrays + JSON"
    )


def decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The value :func:`encode` turned into ``node`` (arrays looked up in ``arrays``)."""
    if isinstance(node, list):
        return [decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        key = node["__array__"]
        if key not in arrays:
            raise StateError(f"array {key!r} is missing from the weights file")
        a = np.array(arrays[key])  # an aligned, writeable copy (BLAS paths depend on alignment)
        return a.T if node.get("order") == "F" else a
    if "__float__" in node:
        return float(node["__float__"])
    if "__np__" in node:
        return np.dtype(node["__np__"]).type(decode(node["value"], arrays))
    if "__tuple__" in node:
        return tuple(decode(v, arrays) for v in node["__tuple__"])
    if "__dict__" in node:
        return {k: decode(v, arrays) for k, v in node["__dict__"].items()}
    if "__strings__" in node:
        return np.array(node["value"], dtype=np.dtype(node["__strings__"]))
    if "__struct__" in node:
        dtype = np.dtype([(n, np.dtype(d)) for n, d in node["__struct__"]])
        out = np.empty(tuple(node["shape"]), dtype=dtype)
        for name, ref in node["fields"].items():
            out[name] = decode(ref, arrays)
        return out
    if "__object__" in node:
        cls = _import_class(node["__object__"])
        obj = cls.__new__(cls)
        obj.__dict__.update({k: decode(v, arrays) for k, v in node["state"].items()})
        _rebuild(obj)
        return obj
    raise StateError(f"unknown state node with keys {sorted(node)}")


def _rebuild(obj: Any) -> None:
    """Restore what :data:`_SKIP_ATTRS` left out and prediction needs."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if isinstance(obj, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        obj._loss = obj._get_loss(sample_weight=None)

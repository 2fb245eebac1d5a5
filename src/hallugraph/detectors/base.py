"""The detector contract: scikit-learn's estimator rules (parameters from the ``__init__``
signature, fitted state in attributes ending with ``_``), a fitted state saved without pickle
(:mod:`.state`), and :func:`register`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from hallugraph.features import FeatureTable

STATE_FORMAT = 1
"""Version of the ``get_state`` layout; bumped when it changes incompatibly."""


class NotApplicable(ValueError):
    """The detector cannot run on these traces at all (e.g. the statistic it reads was never
    computed for this run); :func:`hallugraph.evaluation.evaluate` skips it on that run."""


class Detector:
    """Base class. Subclasses set ``name``, ``family``, ``stats`` and implement the two methods."""

    name: ClassVar[str]
    family: ClassVar[str]
    """Signal family: logits, hidden, attention, graph, attribution."""
    paper: ClassVar[str] = ""
    stats: ClassVar[tuple[str, ...]] = ()
    supervised: ClassVar[bool] = True
    """Unsupervised scores (e.g. perplexity) ignore ``y`` in ``fit``, except to orient the sign."""
    _decode_last: ClassVar[tuple[str, ...]] = ()
    """Fitted attributes :meth:`set_state` restores after the others (they need them)."""

    def fit(self, X: FeatureTable, y: np.ndarray) -> Detector:
        raise NotImplementedError

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        """``[n]`` scores in [0, 1], higher = more likely hallucinated."""
        raise NotImplementedError

    def stats_read(self) -> tuple[str, ...]:
        """The statistics this instance reads (its parameters may pick some of ``stats``)."""
        return tuple(self.stats)

    def score(self, X: FeatureTable, y: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(np.asarray(y), self.predict_proba(X)))

    # ------------------------------------------------------------------ estimator contract

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """Names of ``__init__``'s parameters (scikit-learn's rule: no ``*args``)."""
        init = cls.__init__
        if init is object.__init__:
            return []
        names = []
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.kind == p.VAR_KEYWORD:
                continue
            if p.kind == p.VAR_POSITIONAL:
                raise TypeError(f"{cls.__name__}.__init__ must not take *args (estimator rule)")
            names.append(p.name)
        return sorted(names)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The parameters of ``__init__``, as stored on the detector."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> Detector:
        """Set parameters by name (unknown names raise ``ValueError``); returns ``self``."""
        names = self._get_param_names()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no parameter(s) {', '.join(unknown)}; "
                f"its parameters: {', '.join(names) or '(none)'}"
            )
        for name, value in params.items():  # scikit-learn's rule: set, do not re-initialize
            setattr(self, name, value)
        return self

    _choices: ClassVar[dict[str, tuple[Any, ...]]] = {}
    """Parameters with a fixed set of values: checked by :meth:`check_params` (in ``fit``), not
    in ``__init__``, which only stores its arguments (scikit-learn's rule)."""

    def check_params(self) -> None:
        """Raise ``ValueError`` naming a parameter whose value is not one of its choices."""
        for name, allowed in self._choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{type(self).__name__}: {name} must be one of {sorted(allowed)}, "
                    f"not {getattr(self, name)!r}"
                )

    def fitted_attributes(self) -> list[str]:
        """Names of the attributes ``fit`` set (public, ending with ``_``)."""
        return sorted(k for k in vars(self) if k.endswith("_") and not k.startswith("_"))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _encode_fitted(self, name: str, value: Any, arrays: dict[str, np.ndarray]) -> Any:
        """JSON for one fitted attribute (arrays into ``arrays``); subclasses with objects the
        generic encoder does not know (torch modules) override this and
        :meth:`_decode_fitted`."""
        from hallugraph.detectors.state import encode

        return encode(value, arrays, name)

    def _decode_fitted(self, name: str, node: Any, arrays: dict[str, np.ndarray]) -> Any:
        from hallugraph.detectors.state import decode

        return decode(node, arrays)

    def get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: every numeric array of the parameters and fitted attributes, and
        JSON-able metadata (detector name, parameters, fitted attributes with references to
        the arrays). Never pickle."""
        from hallugraph.detectors.state import encode

        arrays: dict[str, np.ndarray] = {}
        meta = {
            "state_format": STATE_FORMAT,
            "detector": self.name,
            "params": {k: encode(v, arrays, f"params.{k}") for k, v in self.get_params().items()},
            "fitted": {
                k: self._encode_fitted(k, getattr(self, k), arrays)
                for k in self.fitted_attributes()
            },
        }
        return arrays, meta

    def set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Detector:
        """Restore parameters and fitted attributes saved by :meth:`get_state`; returns
        ``self``."""
        from hallugraph.detectors.state import StateError, decode

        if meta.get("state_format") != STATE_FORMAT:
            raise StateError(
                f"detector state format {meta.get('state_format')!r}; this version of "
                f"hallugraph reads format {STATE_FORMAT}"
            )
        if meta.get("detector") != self.name:
            raise StateError(f"state of detector {meta.get('detector')!r}, not {self.name!r}")
        params = {k: decode(v, arrays) for k, v in meta.get("params", {}).items()}
        self.set_params(**params)
        for k in self.fitted_attributes():
            delattr(self, k)
        fitted = meta.get("fitted", {})
        order = sorted(fitted, key=lambda k: (k in self._decode_last, k))
        for k in order:
            node = fitted[k]
            if not (k.endswith("_") and not k.startswith("_")):
                raise StateError(f"{k!r} is not a fitted attribute name")
            setattr(self, k, self._decode_fitted(k, node, arrays))
        return self


DETECTORS: dict[str, type[Detector]] = {}
_LOADERS: list[Callable[[], None]] = []


def add_loader(load: Callable[[], None]) -> None:
    """Register a function that imports detector modules (the registry's built-in list), run
    by :func:`registered_detectors`; a detector that composes others by name (``fusion``)
    then knows every detector without importing the registry, which imports it."""
    if load not in _LOADERS:
        _LOADERS.append(load)


def registered_detectors() -> dict[str, type[Detector]]:
    """Every registered detector by name, after running the loaders."""
    for load in _LOADERS:
        load()
    return dict(DETECTORS)


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a detector available by its ``name``."""
    if cls.name in DETECTORS and DETECTORS[cls.name] is not cls:
        raise ValueError(f"detector {cls.name!r} registered twice")
    DETECTORS[cls.name] = cls
    return cls

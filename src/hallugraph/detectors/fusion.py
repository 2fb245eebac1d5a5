"""``fusion``: stacking over the signal families (logits, hidden, attention, graph, shift and
attribution where a run has it).

``fit(X, y)`` runs a grouped (by question), stratified ``inner_folds``-fold cross-validation
*inside the training rows it is given*: every base detector is fitted on the other folds and
scores the held-out one, so each training answer gets an out-of-fold score from every base
detector; a regularized (L2, ``C``), class-balanced logistic regression — the meta-learner —
learns how to weigh those scores. The evaluation calls ``fit`` on a fold's training questions
only, so no fold's test answers ever touch the meta-learner (nested cross-validation).

* **Cross-fitted bases** (``bases_fit="crossfit"``, the default): the ``inner_folds`` models of
  each base detector that produced the out-of-fold scores are kept, and a new answer's base
  score is the *mean of their predicted probabilities*; no base is refitted. Each of those
  models saw ``(inner_folds - 1) / inner_folds`` of the training rows, as the models whose
  scores the meta-learner learned from, so the meta-learner meets at prediction time scores
  of the kind it was trained on (a model refitted on all the rows is a little sharper than
  the ones it learned from), averaged over three models; and the fit costs about two thirds of the
  refit variant (3 inner fits on 2/3 of the rows instead of 3 + one on all of them), the
  scoring three base predictions instead of one. ``bases_fit="refit"`` refits every base on
  all the training rows after the inner CV (the textbook stacking; kept for comparison:
  docs/BENCHMARKS.md, "What the benchmark table costs").

* **Meta-features**: each base score ``s`` as ``logit(s)`` (clipped to [1e-6, 1 - 1e-6]),
  standardized with the training rows' mean and spread. With ``normalize="run"`` each base
  score is instead replaced by its rank within its run, centred (``rank / (n + 1) - 0.5``):
  a monotone re-scaling of a detector (another domain, another answer style) then changes
  nothing. It is computed over the rows given to ``predict_proba`` that come from one run, so
  score a run's answers together (a single answer has no rank): for the evaluation and batch
  scoring, not for answer-by-answer serving.
* **Robust to a missing family**: a base detector that cannot run on the training rows
  (:class:`NotApplicable`: e.g. no attribution scores) or fails is left out (``dropped_``
  says why); one that cannot run at prediction time contributes its training mean (a
  standardized 0): the others decide. A base name that is not a registered detector is a
  ``ValueError``, never a family silently left out.
* ``family_weights_``: each family's share of the meta-learner's absolute coefficients (the
  inputs are standardized, so coefficients are comparable).

The default base set holds the cheap-to-fit detectors of each family (the CHARM network,
minutes per fit, and the length control are not in it); ``bases`` takes any registered names.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from hallugraph.detectors.base import Detector, NotApplicable, register, registered_detectors
from hallugraph.features import FeatureTable
from hallugraph.splits import grouped_kfold

DEFAULT_BASES = (
    "mean_entropy",
    "min_logprob",
    "perplexity",
    "saplma_lr",
    "llmcheck_hidden",
    "lookback_lens",
    "llmcheck_attn_lr",
    "lapeigvals",
    "graph_topology",
    "hallushift",
    "groundedness_lr",
)
_EPS = 1e-6


def _registered() -> dict[str, type[Detector]]:
    """Every registered detector but the fusion (the built-in ones loaded first)."""
    return {k: v for k, v in registered_detectors().items() if k != Fusion.name}


def _check_bases(bases: tuple[str, ...]) -> dict[str, type[Detector]]:
    """The registry, after a ``ValueError`` naming any base that is not a registered detector
    (a typo must fail, not leave a family silently out of the fusion)."""
    reg = _registered()
    unknown = [b for b in bases if b not in reg]
    if unknown:
        raise ValueError(
            f"fusion: unknown base detector(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(reg))}"
        )
    return reg


def _base(name: str, seed: int) -> Detector:
    det = _check_bases((name,))[name]()
    if "seed" in det.get_params():
        det.set_params(seed=seed)
    return det


def _proba(model: Detector | float, X: FeatureTable) -> np.ndarray:
    """``[n]`` scores of a base model (a float: a constant model, fitted on one class)."""
    if isinstance(model, float):
        return np.full(len(X), model)
    return np.asarray(model.predict_proba(X), dtype=np.float64).reshape(-1)


def _runs_of(X: FeatureTable) -> np.ndarray:
    """The run of each row (a table of statistics in memory is one run)."""
    index = getattr(X, "_index", None)
    return np.asarray(index)[:, 0] if index is not None else np.zeros(len(X), dtype=np.int64)


@register
class Fusion(Detector):
    """Stacked, L2-regularized logistic regression over the base detectors' scores."""

    name = "fusion"
    family = "fusion"
    paper = "stacking (Wolpert 1992) over the detectors of hallugraph"
    stats = ()
    """The base detectors' statistics: :meth:`stats_read`."""

    def __init__(
        self,
        bases: tuple[str, ...] = DEFAULT_BASES,
        inner_folds: int = 3,
        C: float = 0.1,
        normalize: str = "none",
        seed: int = 0,
        bases_fit: str = "crossfit",
    ) -> None:
        self.bases = bases
        self.inner_folds = inner_folds
        self.C = C
        self.normalize = normalize
        self.seed = seed
        self.bases_fit = bases_fit

    _choices = {"normalize": ("none", "run"), "bases_fit": ("crossfit", "refit")}

    def stats_read(self) -> tuple[str, ...]:
        reg = _check_bases(tuple(self.bases))
        out: dict[str, None] = {}
        for b in self.bases:
            out.update(dict.fromkeys(reg[b]().stats_read()))
        return tuple(out)

    # ------------------------------------------------------------------ meta-features

    def _transform(self, S: np.ndarray, runs: np.ndarray, fit: bool) -> np.ndarray:
        if self.normalize == "run":
            Z = np.empty_like(S)
            for r in np.unique(runs):
                m = runs == r
                ranks = np.argsort(np.argsort(S[m], axis=0, kind="stable"), axis=0) + 1.0
                Z[m] = ranks / (m.sum() + 1) - 0.5
            return Z * np.sqrt(12.0)  # unit variance for a uniform rank
        Z = np.log(np.clip(S, _EPS, 1 - _EPS) / np.clip(1 - S, _EPS, 1 - _EPS))
        if fit:
            self.mean_ = Z.mean(0)
            self.scale_ = np.where(Z.std(0) > 1e-12, Z.std(0), 1.0)
        return (Z - self.mean_) / self.scale_

    # ------------------------------------------------------------------ fit / predict

    def fit(self, X: FeatureTable, y: np.ndarray) -> Fusion:
        self.check_params()
        _check_bases(tuple(self.bases))
        y = np.asarray(y).astype(np.int64)
        groups = X.groups
        k = int(min(self.inner_folds, len(np.unique(groups))))
        if k < 2 or len(np.unique(y)) < 2:
            raise ValueError(
                f"fusion needs two classes and at least 2 questions ({len(y)} answers given)"
            )
        folds = grouped_kfold(groups, y, n_folds=k, n_repeats=1, seed=self.seed)
        columns: list[np.ndarray] = []
        kept: list[str] = []
        self.dropped_: dict[str, str] = {}
        fold_models: dict[str, list[Detector | float]] = {}
        for name in self.bases:
            try:
                oof = np.full(len(y), np.nan)
                models: list[Detector | float] = []
                for _, _, tr, te in folds:
                    if len(np.unique(y[tr])) < 2:  # one class: its rate is the best score
                        models.append(float(y[tr].mean()))
                        oof[te] = models[-1]
                        continue
                    models.append(_base(name, self.seed).fit(X[tr], y[tr]))
                    oof[te] = _proba(models[-1], X[te])
                if not np.isfinite(oof).all():
                    raise ValueError("non-finite scores")
            except NotApplicable as err:
                self.dropped_[name] = f"not applicable: {err}"
                continue
            except Exception as err:  # noqa: BLE001 - one family must not sink the fusion
                self.dropped_[name] = f"{type(err).__name__}: {err}"[:300]
                continue
            columns.append(oof)
            kept.append(name)
            fold_models[name] = models
        if not kept:
            raise NotApplicable(
                "fusion: no base detector could run on these traces: "
                + "; ".join(f"{k}: {v}" for k, v in self.dropped_.items())
            )
        Z = self._transform(np.stack(columns, axis=1), _runs_of(X), fit=True)
        self.meta_ = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000).fit(Z, y)
        self.kept_ = tuple(kept)
        if self.bases_fit == "refit":
            self.bases_ = {name: [_base(name, self.seed).fit(X, y)] for name in kept}
        else:
            self.bases_ = fold_models
        reg = _registered()
        coef = np.abs(self.meta_.coef_[0])
        total = coef.sum() or 1.0
        weights: dict[str, float] = {}
        for name, c in zip(kept, coef, strict=True):
            fam = str(getattr(reg[name], "family", "other"))
            weights[fam] = weights.get(fam, 0.0) + float(c / total)
        self.family_weights_ = weights
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        cols = []
        missing = []
        for j, name in enumerate(self.kept_):
            models = self.bases_[name]
            if not isinstance(models, list):  # a state saved before the cross-fitting
                models = [models]
            try:
                s = np.mean([_proba(m, X) for m in models], axis=0)
            except NotApplicable:
                s = np.full(len(X), np.nan)
                missing.append(j)
            cols.append(s)
        S = np.stack(cols, axis=1)
        S[:, missing] = 0.5
        Z = self._transform(S, _runs_of(X), fit=False)
        Z[:, missing] = 0.0  # the training mean: the family says nothing
        return self.meta_.predict_proba(Z)[:, 1]

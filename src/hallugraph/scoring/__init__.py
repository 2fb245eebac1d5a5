"""Use a trained detector on new answers: train, save, load, score, serve.

* :mod:`~hallugraph.scoring.scorer`: :class:`Scorer` (``train`` / ``save`` / ``load`` /
  ``score`` / ``score_batch`` / ``generate``) and its :class:`Verdict`;
* :mod:`~hallugraph.scoring.bundle`: the folder a detector is saved to (``detector.json`` +
  ``weights.safetensors``, no pickle) and the checks on loading it;
* :mod:`~hallugraph.scoring.trace`: one answer's trace and statistics in memory, computed with
  the benchmark path's code; :mod:`~hallugraph.scoring.tokens`: per-token scores;
* :mod:`~hallugraph.scoring.server`: ``hallugraph serve`` (FastAPI + uvicorn, extra ``serve``);
* :mod:`~hallugraph.scoring.cli`: ``hallugraph train`` / ``score`` / ``serve``.
"""

from hallugraph.scoring.bundle import BundleError, load_bundle, save_bundle
from hallugraph.scoring.scorer import Scorer, ScoringError, TokenScore, Verdict

__all__ = [
    "BundleError",
    "Scorer",
    "ScoringError",
    "TokenScore",
    "Verdict",
    "load_bundle",
    "save_bundle",
]

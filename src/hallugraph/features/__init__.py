"""Per-trace statistics, computed once and shared by every detector (lm-polygraph's idea).

A *statistic* turns one trace (the dict of :class:`hallugraph.store.TraceStore`) into a
fixed-shape array: e.g. the hidden state of the last answer token at every layer, the lookback
ratio of every head, the top-k Laplacian eigenvalues of every attention map. Statistics are
computed in ONE streaming pass over a run (one shard in memory at a time), for all requested
statistics together, and cached beside the run in ``RUN/stats/<name>/<shard>``; a detector
only ever sees the cached arrays.

Adding a statistic: a :class:`Statistic` subclass (its ``outputs`` named, its ``fields``
declared, its parameters the arguments of ``__init__``; :mod:`.base`) decorated with
:func:`register`, in a module of this package listed in :mod:`.registry`, or in the detector's
own module when only that detector reads it.
"""

from hallugraph.features.base import STATS_DIR, Statistic, register
from hallugraph.features.cache import cache_problem, check_cache_file, compute_stats
from hallugraph.features.registry import all_statistics, get_statistic
from hallugraph.features.table import FeatureTable

__all__ = [
    "STATS_DIR",
    "FeatureTable",
    "Statistic",
    "all_statistics",
    "cache_problem",
    "check_cache_file",
    "compute_stats",
    "get_statistic",
    "register",
]

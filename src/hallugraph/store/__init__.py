"""The trace store: a run directory of safetensors shards plus a JSON-lines manifest.

:mod:`.layout` (the files of a run, the packed attention triangle), :mod:`.writer`
(:class:`TraceWriter`, resumable), :mod:`.reader` (:class:`TraceStore`), :mod:`.integrity`
(checksums), :mod:`.sizing` (bytes per trace, shards), :mod:`.codec` and :mod:`.predictor`
(``--codec predictive``: lossless residuals against the model's own prediction).
"""

from hallugraph.store.integrity import IntegrityError, StoreError
from hallugraph.store.layout import (
    SHARD_DIR,
    check_codec,
    check_out_dir,
    mark_pruned,
    pack_tril,
    tril_size,
    unpack_tril,
)
from hallugraph.store.reader import TraceStore
from hallugraph.store.writer import TraceWriter

__all__ = [
    "SHARD_DIR",
    "IntegrityError",
    "StoreError",
    "TraceStore",
    "TraceWriter",
    "check_codec",
    "check_out_dir",
    "mark_pruned",
    "pack_tril",
    "tril_size",
    "unpack_tril",
]

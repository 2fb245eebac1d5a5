"""Extraction: generate (or teacher-force) answers and capture the model's hidden states and
attention maps.

:mod:`.capture` (prepare the prompts, capture a batch: :class:`Trace`), :mod:`.decoding`
(the prefix-cached greedy decoder), :mod:`.plan` (prompts that would not fit the context
window, checked before any compute). Writing the traces to a run is :mod:`hallugraph.pipeline`.
"""

from hallugraph.extract.capture import GenerationSettings, Trace, capture_batch
from hallugraph.extract.inputs import Prepared, iter_batches, prepare, shared_prefix_len
from hallugraph.extract.plan import context_window, prompt_problems

__all__ = [
    "GenerationSettings",
    "Prepared",
    "Trace",
    "capture_batch",
    "context_window",
    "iter_batches",
    "prepare",
    "prompt_problems",
    "shared_prefix_len",
]

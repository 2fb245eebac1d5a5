"""hallugraph's own attribution engine: circuit-tracer 0.5.0's attribution graphs for
Llama-family models with per-layer transcoders, in plain PyTorch (no nnsight, no
circuit-tracer import).

* :class:`AttributionEngine` (:mod:`~.attribute`): load a checkpoint and a transcoder set,
  ``attribute(tokens, ...)`` → :class:`AttributionGraph`.
* :class:`AttributionGraph` (:mod:`~.graph`): the dense graph in circuit-tracer's node order;
  ``to_circuit_tracer()`` when circuit-tracer is installed.
* :func:`load_transcoders` (:mod:`~.transcoders`): circuit-tracer's on-disk transcoder format
  (ReLU, JumpReLU, optional ``W_skip``).
* :func:`attribute_prefixes` (:mod:`~.prefixes`): one target at the end of each of several
  nested prefixes of one sequence (``targets=all``), sharing the forward, the encodings and
  the feature rows.
* :mod:`~.model` (the one frozen forward), :mod:`~.sweep` (batched linear backward sweeps),
  :mod:`~.rows` (compact row storage and the influence ranking).
"""

from hallugraph.attribution.engine.attribute import AttributionEngine, logit_targets
from hallugraph.attribution.engine.graph import AttributionGraph, GraphConfig, LogitTarget
from hallugraph.attribution.engine.prefixes import attribute_prefixes
from hallugraph.attribution.engine.transcoders import EngineTranscoders, load_transcoders

__all__ = [
    "AttributionEngine",
    "AttributionGraph",
    "EngineTranscoders",
    "GraphConfig",
    "LogitTarget",
    "attribute_prefixes",
    "load_transcoders",
    "logit_targets",
]

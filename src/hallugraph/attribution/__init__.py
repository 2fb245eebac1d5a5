"""Attribution graphs (circuit-tracer's, built by our own engine) and what hallugraph reads
from them.

* :mod:`~hallugraph.attribution.engine`: circuit-tracer 0.5.0's attribution graphs in plain
  PyTorch (no circuit-tracer, no nnsight), the default of ``hallugraph groundedness`` and
  ``hallugraph attribution``.
* :mod:`~hallugraph.attribution.scores`: Gctx, RS, CS and Groundedness from a graph's
  adjacency matrix (torch only).
* :mod:`~hallugraph.attribution.transcoders`: per-layer transcoders trained offline, saved in
  circuit-tracer's format (``hallugraph transcoders train``).
* :mod:`~hallugraph.attribution.tracer`: loading a circuit-tracer ``ReplacementModel`` (nnsight
  backend) and attributing a prompt (``--engine circuit-tracer``, the cross-check); needs the
  optional extra ``attribution``.
* :mod:`~hallugraph.attribution.run`: Gctx / RS / CS of every trace of a run with a
  context, stored beside the run (``hallugraph groundedness RUN``, resumable).
* :mod:`~hallugraph.attribution.viewer`: one trace's graph as circuit-tracer's viewer JSON (no
  pickle), a PNG, the local viewer (``hallugraph attribution RUN --index I``).
"""

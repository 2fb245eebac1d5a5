"""Attribution graphs (circuit-tracer) and what hallugraph reads from them.

* :mod:`~hallugraph.attribution.scores`: Gctx, RS, CS and Groundedness from a graph's
  adjacency matrix (torch only).
* :mod:`~hallugraph.attribution.transcoders`: per-layer transcoders trained offline, saved in
  circuit-tracer's format (``hallugraph transcoders train``).
* :mod:`~hallugraph.attribution.tracer`: loading a circuit-tracer ``ReplacementModel`` (nnsight
  backend) and attributing a prompt; needs the optional extra ``attribution``.
"""

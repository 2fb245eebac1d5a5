"""Attention maps as token graphs: one directed graph per trace and layer.

The idea (attention as a graph over tokens; e.g. LapEigvals, Binkowski et al. 2025, and
CHARM's attention graphs with hidden-state node features): at layer ``l`` every token is a
node, and the softmax weight ``A[i, j]`` with which query token ``i`` reads key token ``j`` is a
directed edge ``j -> i`` (source = key, target = query: the direction information flows). Under
the causal mask ``j <= i``, so the graph is a DAG plus self-loops.

:func:`build_graph` turns a stored trace (the dict of :class:`hallugraph.store.TraceStore`)
and a layer into an :class:`AttentionGraph`:

* **nodes** — one per token, in sequence order: token id, token string, position, role
  (:func:`token_roles`), and the hidden state as node features (``hidden="output"``:
  ``hidden_states[layer + 1]``, what layer ``layer`` writes; ``"input"``: ``hidden_states[layer]``,
  what its attention reads);
* **edges** — ``heads="mean"``: one scalar weight, the mean of the heads' weights;
  ``heads="all"``: the vector of every head's weight. Edges of weight exactly 0 (the causal
  upper triangle, fp16 underflow) are never edges;
* **pruning** — ``threshold`` keeps the edges whose mean-over-heads weight is ``>= threshold``;
  ``top_k`` then keeps, for each target (query), its ``k`` heaviest incoming edges (ties: the
  earlier key first). Both select by the mean-over-heads weight, so ``heads="mean"`` and
  ``heads="all"`` keep the same edge set. ``self_loops=False`` drops the ``i -> i`` edges.

Edges are listed in row-major order of the attention map: by target, then by source.

Exports: :meth:`AttentionGraph.to_networkx` (``networkx.DiGraph``) and
:meth:`AttentionGraph.to_pyg` (``torch_geometric.data.Data``); :func:`draw_arc_diagram` draws
one graph as an arc diagram (the CLI's ``hallugraph graph``).

**Roles** (:func:`token_roles`; ids are indices into :data:`ROLES`), by decreasing precedence:

* ``answer`` — positions ``>= prompt_len`` (exact);
* ``context`` — positions inside ``context_span`` (exact; the retrieved document of RAG
  datasets, located from the tokenizer's offsets at extraction);
* ``question`` — the prompt tokens that overlap the last occurrence of the trace's
  ``question`` in the prompt, found in the concatenated ``tokens_decoded`` with whitespace
  ignored (sentencepiece pieces decode without their leading space) and every run of
  non-ASCII characters of the question matching any text (a character split over several
  byte-level tokens decodes as replacement characters). Not found: no question tokens;
* ``system`` — the system turn of the chat template, from its opening marker to its closing
  marker inclusive, the first pair of :data:`SYSTEM_MARKERS` found in the prompt (ChatML
  ``<|im_start|>system ... <|im_end|>`` as SmolLM2 and Qwen, Llama 3
  ``<|start_header_id|>system<|end_header_id|> ... <|eot_id|>``, Llama 2 ``<<SYS>> ...
  <</SYS>>``, Phi-3 ``<|system|> ... <|end|>``); none without a system turn;
* ``prompt`` — every other prompt token: chat markup of the user and assistant turns,
  instruction, template words such as ``Context:`` and ``Question:``.
"""

from hallugraph.graphs.draw import ROLE_COLORS, draw_arc_diagram, printable
from hallugraph.graphs.graph import AttentionGraph, build_graph
from hallugraph.graphs.roles import ROLE_IDS, ROLES, token_roles

__all__ = [
    "ROLES",
    "ROLE_IDS",
    "ROLE_COLORS",
    "AttentionGraph",
    "build_graph",
    "token_roles",
    "draw_arc_diagram",
    "printable",
]

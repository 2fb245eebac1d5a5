"""The engine's attribution graph: the fields of ``circuit_tracer.Graph`` that hallugraph reads
(scores, viewer), without importing circuit-tracer; :meth:`AttributionGraph.to_circuit_tracer`
converts when it is installed (for its viewer JSON).

Node order of ``adjacency_matrix`` (rows = targets, columns = sources), as circuit-tracer's::

    [selected features (ascending active-feature index)]
    [error nodes, layer-major then position (n_layers · n_pos)]
    [token nodes (n_pos)]
    [logit nodes (n_logits)]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import torch

__all__ = ["AttributionGraph", "GraphConfig", "LogitTarget"]


class LogitTarget(NamedTuple):
    """A logit node: its token string and vocabulary id (as circuit-tracer's ``LogitTarget``)."""

    token_str: str
    vocab_idx: int


@dataclass(frozen=True)
class GraphConfig:
    """The model facts a graph carries (the fields of circuit-tracer's ``UnifiedConfig``)."""

    n_layers: int
    d_model: int
    d_head: int
    n_heads: int
    d_mlp: int
    d_vocab: int
    tokenizer_name: str
    model_name: str
    original_architecture: str
    n_key_value_heads: int | None = None

    @classmethod
    def from_hf(cls, config: Any) -> GraphConfig:
        """From a HuggingFace ``PretrainedConfig``."""
        n_heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        name = str(getattr(config, "name_or_path", "") or "")
        return cls(
            n_layers=int(config.num_hidden_layers),
            d_model=int(config.hidden_size),
            d_head=int(head_dim),
            n_heads=n_heads,
            d_mlp=int(config.intermediate_size),
            d_vocab=int(config.vocab_size),
            tokenizer_name=name,
            model_name=name,
            original_architecture=(config.architectures or ["LlamaForCausalLM"])[0],
            n_key_value_heads=getattr(config, "num_key_value_heads", None),
        )


@dataclass
class AttributionGraph:
    """A dense attribution graph (see the module docstring for the node order).

    ``active_features [n_active, 3]`` = (layer, position, feature id) of every active feature,
    ``activation_values [n_active]`` their activations, ``selected_features`` the indices into
    ``active_features`` of the feature nodes, ``logit_probabilities`` the logit nodes' weights.
    """

    input_string: str
    input_tokens: torch.Tensor
    active_features: torch.Tensor
    activation_values: torch.Tensor
    selected_features: torch.Tensor
    adjacency_matrix: torch.Tensor
    logit_targets: list[LogitTarget]
    logit_probabilities: torch.Tensor
    vocab_size: int
    cfg: GraphConfig
    scan: str | list[str] | None = None
    selection_order: torch.Tensor | None = None
    """The selected features (indices into ``active_features``) in the order the exploration
    visited them (descending estimated influence within each ranking); ``None`` when every
    active feature was taken without ranking. Not a circuit-tracer field."""

    @property
    def n_pos(self) -> int:
        return len(self.input_tokens)

    @property
    def logit_token_ids(self) -> torch.Tensor:
        return torch.tensor([t.vocab_idx for t in self.logit_targets], dtype=torch.long)

    def to(self, device: str | torch.device) -> AttributionGraph:
        self.adjacency_matrix = self.adjacency_matrix.to(device)
        self.active_features = self.active_features.to(device)
        self.logit_probabilities = self.logit_probabilities.to(device)
        return self

    def prefix(self, n: int) -> AttributionGraph:
        """The graph a run with ``max_feature_nodes=n`` would have built: the first ``n``
        features of :attr:`selection_order` and the edges among the kept nodes.

        Exact for any ``n`` up to this graph's budget, because the exploration is greedy: a run
        with budget ``n`` ranks the same rows as this one and takes the same first ``n``
        features (tested against separate runs). Sweeping node budgets then costs one run at
        the largest budget instead of one run per budget."""
        n_sel = len(self.selected_features)
        if n >= n_sel:
            return self
        if n < 1:
            raise ValueError(f"a graph needs at least one feature node, not {n}")
        if self.selection_order is None or len(self.selection_order) != n_sel:
            raise ValueError("this graph has no selection order (every feature was taken)")
        keep = torch.sort(self.selection_order[:n]).values
        pos = torch.searchsorted(self.selected_features, keep)
        idx = torch.cat([pos, torch.arange(n_sel, len(self.adjacency_matrix))])
        idx_dev = idx.to(self.adjacency_matrix.device)
        return replace(
            self,
            selected_features=keep,
            adjacency_matrix=self.adjacency_matrix[idx_dev][:, idx_dev],
            selection_order=self.selection_order[:n],
        )

    def to_circuit_tracer(self) -> Any:
        """The same graph as a ``circuit_tracer.graph.Graph`` (needs circuit-tracer)."""
        from circuit_tracer.attribution.targets import LogitTarget as CTLogitTarget
        from circuit_tracer.graph import Graph
        from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig

        return Graph(
            input_string=self.input_string,
            input_tokens=self.input_tokens,
            active_features=self.active_features,
            adjacency_matrix=self.adjacency_matrix,
            cfg=UnifiedConfig(**asdict(self.cfg)),
            selected_features=self.selected_features,
            activation_values=self.activation_values,
            logit_targets=[CTLogitTarget(t.token_str, t.vocab_idx) for t in self.logit_targets],
            logit_probabilities=self.logit_probabilities,
            scan=self.scan,
            vocab_size=self.vocab_size,
        )

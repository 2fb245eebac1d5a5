"""Sizes of stored traces and how they are cut into shards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hallugraph.store.layout import (
    tril_size,
)


def estimate_trace_bytes(
    seq_len: int,
    prefix_len: int,
    num_layers: int,
    num_heads: int,
    hidden: int,
    itemsize: int = 2,
) -> int:
    """Bytes of one stored trace of ``seq_len`` tokens whose first ``prefix_len`` rows (the
    prompt prefix shared by the run) are stored once per run: hidden states of the other rows
    for every layer output, and the lower triangle of those rows' attention maps."""
    f = max(0, min(prefix_len, seq_len))
    att_cells = tril_size(seq_len) - tril_size(f)
    return itemsize * (
        (num_layers + 1) * (seq_len - f) * hidden + num_layers * num_heads * att_cells
    )


def shard_chunks(
    items: Sequence[Any], shard_size: int, size_of: Any, max_bytes: int | None
) -> list[list[Any]]:
    """Consecutive chunks of ``items``: at most ``shard_size`` each and, when ``max_bytes`` is
    set, at most ``max_bytes`` of ``size_of(item)`` in total (but never empty)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    chunks: list[list[Any]] = []
    cur: list[Any] = []
    total = 0
    for it in items:
        b = size_of(it) if max_bytes is not None else 0
        if cur and (len(cur) >= shard_size or (max_bytes is not None and total + b > max_bytes)):
            chunks.append(cur)
            cur, total = [], 0
        cur.append(it)
        total += b
    if cur:
        chunks.append(cur)
    return chunks

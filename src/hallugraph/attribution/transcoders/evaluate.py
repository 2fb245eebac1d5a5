"""Fidelity of an exported transcoder set on held-out text: FVU, L0, dead features.

Measured on the exported form (what attribution loads): JumpReLU with the saved thresholds and
``W_skip``, run on the MLP inputs of the model in the dtype it was loaded with. Per layer:

* ``fvu`` = Σ‖y − ŷ‖² / Σ‖y − ȳ‖² over the set's tokens (ȳ: their mean MLP output);
* ``fvu_skip``: the same for the skip alone, ``ŷ = x W_skipᵀ + b_skip`` (the least-squares
  fit before any feature was trained), i.e. what the linear path explains without features;
* ``l0``: mean active features per token; ``dead_frac``: share of features never active on
  the set's tokens; ``dead_at``: the same share over the first N tokens of the set, for N in
  :data:`DEAD_AT` up to the set's size (a feature that fires once in 50 k tokens looks dead on
  20 k: the curve shows how much of ``dead_frac`` is rare-but-alive features).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hallugraph.attribution.transcoders.model import exported_forward
from hallugraph.attribution.transcoders.train import capture
from hallugraph.models import LoadedModel

__all__ = ["DEAD_AT", "evaluate_set", "format_table", "summary"]

#: token counts at which ``dead_at`` reports the share of features not yet active
DEAD_AT = (10_000, 20_000, 50_000, 100_000, 200_000, 500_000)


class _Acc:
    def __init__(self, n_layers: int) -> None:
        self.n = 0
        self.sse = np.zeros(n_layers)
        self.sse_skip = np.zeros(n_layers)
        self.sum = [None] * n_layers
        self.sumsq = np.zeros(n_layers)
        self.active = np.zeros(n_layers)
        self.ever: list[Any] = [None] * n_layers
        self.first: list[Any] = [None] * n_layers  # tokens seen when a feature first fired

    def add_active(self, i: int, on: torch.Tensor) -> None:
        """Count the active entries ``on [n, F]`` of layer ``i`` (before ``n`` is advanced)."""
        self.active[i] += float(on.sum())
        e = on.any(0)
        if self.ever[i] is None:
            self.ever[i] = torch.zeros_like(e)
            self.first[i] = torch.full(e.shape, -1, dtype=torch.long)
        new = e & ~self.ever[i]
        if bool(new.any()):  # the token index of the first firing, within this batch
            self.first[i][new] = self.n + on[:, new].float().argmax(0)
        self.ever[i] |= e

    def rows(self) -> list[dict[str, float]]:
        out = []
        for i in range(len(self.sse)):
            mean = self.sum[i] / max(self.n, 1)
            var = self.sumsq[i] - self.n * float((mean**2).sum())
            out.append(
                {
                    "layer": i,
                    "fvu": self.sse[i] / var if var > 0 else float("nan"),
                    "fvu_skip": self.sse_skip[i] / var if var > 0 else float("nan"),
                    "l0": self.active[i] / max(self.n, 1),
                    "dead_frac": float((~self.ever[i]).float().mean()),
                    "dead_at": {
                        str(m): float(((self.first[i] < 0) | (self.first[i] >= m)).float().mean())
                        for m in DEAD_AT
                        if m <= self.n
                    },
                    "tokens": self.n,
                }
            )
        return out


@torch.no_grad()
def evaluate_set(
    lm: LoadedModel,
    layers: Sequence[Mapping[str, torch.Tensor]],
    texts: Mapping[str, Sequence[str]],
    *,
    skip_bias: Sequence[torch.Tensor] | None = None,
    batch_texts: int = 8,
    max_len: int = 1024,
    progress: bool = True,
) -> dict[str, list[dict[str, float]]]:
    """Per-layer rows for each named text set and for all of them together (``"all"``).

    ``skip_bias``: the skip's own bias per layer (``skip.safetensors`` of a trained set); without
    it the skip-alone FVU uses the mean of ``y − x W_skipᵀ`` over the first batch."""
    from tqdm.auto import tqdm

    n_layers = int(lm.model.config.num_hidden_layers)
    if len(layers) != n_layers:
        raise ValueError(f"the set has {len(layers)} layers, the model {n_layers}")
    pad = lm.tokenizer.pad_token_id or 0
    dtype = next(lm.model.parameters()).dtype
    tensors = [{k: v.to(dtype) for k, v in t.items()} for t in layers]
    biases: list[torch.Tensor | None] = (
        [b.double() for b in skip_bias] if skip_bias is not None else [None] * n_layers
    )
    accs = {name: _Acc(n_layers) for name in (*texts, "all")}
    total = sum(len(v) for v in texts.values())
    bar = tqdm(total=total, desc="evaluate", unit="text", disable=not progress)
    add_special = not lm.use_chat_template
    for name, group in texts.items():
        for b in range(0, len(group), batch_texts):
            chunk = list(group[b : b + batch_texts])
            enc = lm.tokenizer(chunk, add_special_tokens=add_special)["input_ids"]
            ids = [np.asarray(s[:max_len]) for s in enc]
            ins, outs = capture(lm.model, ids, pad)
            for i, t in enumerate(tensors):
                x, y = ins[i].to(dtype), outs[i]
                rec, a = exported_forward(t, x)
                y64 = y.double()
                skip = (x @ t["W_skip"].T).double() if "W_skip" in t else torch.zeros_like(y64)
                if biases[i] is None:
                    biases[i] = (y64 - skip).mean(0)
                for acc in (accs[name], accs["all"]):
                    acc.sse[i] += float((rec.double() - y64).pow(2).sum())
                    acc.sse_skip[i] += float((skip + biases[i] - y64).pow(2).sum())
                    acc.sumsq[i] += float(y64.pow(2).sum())
                    s = y64.sum(0)
                    acc.sum[i] = s if acc.sum[i] is None else acc.sum[i] + s
                    acc.add_active(i, a > 0)
            n = int(ins[0].shape[0])
            accs[name].n += n
            accs["all"].n += n
            bar.update(len(chunk))
    bar.close()
    return {name: acc.rows() for name, acc in accs.items()}


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means (and the worst layer's FVU) of a table; ``dead_at_mean``: the mean ``dead_at``."""
    curve = rows[0].get("dead_at", {})
    return {
        "dead_at_mean": {m: float(np.mean([r["dead_at"][m] for r in rows])) for m in curve},
        "fvu_mean": float(np.mean([r["fvu"] for r in rows])),
        "fvu_max": float(np.max([r["fvu"] for r in rows])),
        "fvu_skip_mean": float(np.mean([r["fvu_skip"] for r in rows])),
        "l0_mean": float(np.mean([r["l0"] for r in rows])),
        "dead_frac_mean": float(np.mean([r["dead_frac"] for r in rows])),
        "dead_frac_max": float(np.max([r["dead_frac"] for r in rows])),
    }


def format_table(tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Plain-text per-layer table: FVU / skip-alone FVU / L0 / dead % for each text set."""
    names = list(tables)
    head = f"{'layer':>5}" + "".join(f"  {n[:22]:>30}" for n in names)
    sub = f"{'':>5}" + "".join(f"  {'FVU  skip   L0  dead%':>30}" for _ in names)
    lines = [head, sub, "-" * len(head)]
    n_layers = len(tables[names[0]])
    for i in range(n_layers):
        cells = []
        for n in names:
            r = tables[n][i]
            dead = 100 * r["dead_frac"]
            cells.append(f"  {r['fvu']:>8.3f} {r['fvu_skip']:>5.3f} {r['l0']:>6.1f} {dead:>5.1f}")
        lines.append(f"{i:>5}" + "".join(cells))
    lines.append("-" * len(head))
    cells = []
    for n in names:
        s = summary(tables[n])
        cells.append(
            f"  {s['fvu_mean']:>8.3f} {s['fvu_skip_mean']:>5.3f} {s['l0_mean']:>6.1f} "
            f"{100 * s['dead_frac_mean']:>5.1f}"
        )
    lines.append(f"{'mean':>5}" + "".join(cells))
    tokens = ", ".join(f"{n} {int(tables[n][0]['tokens'])}" for n in names)
    worst = ", ".join(f"{summary(tables[n])['fvu_max']:.3f}" for n in names)
    lines.append(f"tokens: {tokens}; worst layer FVU: {worst}")
    for n in names:
        curve = summary(tables[n])["dead_at_mean"]
        if curve:
            pts = ", ".join(f"{int(m) // 1000}k {100 * v:.1f}%" for m, v in curve.items())
            lines.append(f"{n}: mean dead % over the first N tokens: {pts}")
    return "\n".join(lines)

"""A greedy decoder for Llama-family models that keeps every row it computes.

Why a decoder of our own: on a CPU, ``generate`` then a second capture pass costs about twice
the generation, and even capturing from ``generate``'s own outputs pays for ``transformers``'
eager attention (it copies the KV cache once per step to repeat it over the query heads) and
for finished sequences that keep being decoded until the longest one ends. This decoder:

* computes the prompt prefix that every prompt of a run shares (chat header, instruction) ONCE,
  and starts every batch from its KV cache;
* runs grouped-query attention without copying keys and values;
* runs the linear layers on real rows only (no left padding, no finished sequence) and, on a
  CPU in fp32, through oneDNN-packed weights (:func:`hallugraph.extract.packing.pack_weight`),
  much faster than the default matmul with the few rows of a decode step;
* drops a sequence from the batch as soon as its final token has been fed (its KV cache rows
  are compacted away now and then);
* records, as it goes, each position's hidden states (every layer) and attention row (every
  layer and head), plus the log-prob and entropy of each chosen token.

It reads the weights of the ``transformers`` model in place (``embed_tokens``, each layer's
``input_layernorm``, ``q/k/v/o_proj`` (+ Qwen3's ``q_norm``/``k_norm``),
``post_attention_layernorm``, ``mlp``, the final ``norm``, ``lm_head``) and uses its rotary
embedding, so it computes the same function; tests compare its traces with an independent
``transformers`` forward pass. Other architectures fall back to ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hallugraph.extract.packing import _pack_linears, packed_linear

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def supports(model: Any) -> bool:
    """Whether :class:`PrefixDecoder` can run this model."""
    quantized = getattr(model, "quantization_config", None) is not None
    return model.config.model_type in SUPPORTED_MODEL_TYPES and not quantized


def token_stats(
    logits: torch.Tensor, chosen: torch.Tensor | None = None
) -> tuple[list[int], list[float], list[float]]:
    """The chosen tokens (greedy when ``chosen`` is None), the log-prob of each, and the
    entropy (nats) of each next-token distribution, from ``logits [n, vocab]``. Summed in
    float64, then rounded to float32: the order of a sum depends on the number of threads."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    tok = logp.argmax(-1) if chosen is None else chosen.to(logp.device)
    lp = logp.gather(-1, tok[:, None])[:, 0]
    ent = -(logp.exp() * logp).sum(-1)
    return tok.tolist(), lp.float().tolist(), ent.float().tolist()


def _own_index(key_mask: torch.Tensor, lens: Sequence[int], p: int) -> list[torch.Tensor]:
    """For each sequence ``b`` of a left-padded pass (``key_mask [B, p+width]``, ``lens[b]``
    tokens after the ``p`` cached ones): the flat indices, into one head's ``[width, p+width]``
    attention plane, of its own last ``s`` rows, unpadded and packed as rows ``p..p+s-1`` of
    its lower triangle (row after row). Gathering them layer by layer keeps only what is
    stored, never the padded maps of every layer (issue 16: one long prompt padded a whole
    batch)."""
    width = key_mask.shape[1] - p
    out = []
    for b, s in enumerate(lens):
        keys = key_mask[b].nonzero()[:, 0].cpu()  # the p+s real key positions
        r, c = torch.meshgrid(torch.arange(s), torch.arange(p + s), indexing="ij")
        flat = (width - s + r) * (p + width) + keys[c]
        out.append(flat[c <= r + p].to(key_mask.device))
    return out


@dataclass
class _Row:
    """What is collected for one sequence while it decodes."""

    index: int
    suffix: list[int]
    answer: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)  # each [L+1, n, H]
    attn: list[torch.Tensor] = field(default_factory=list)  # each [L, heads, n, keys]
    finished: bool = False


@dataclass
class Decoded:
    """One decoded sequence: its rows after the prefix, and answer statistics."""

    answer: list[int]
    finished: bool
    hidden_states: torch.Tensor  # [L+1, S-p, H]
    attentions: torch.Tensor  # packed lower-triangle rows p..S-1: [L, heads, n]
    logprobs: list[float]
    entropy: list[float]


class PrefixDecoder:
    """Greedy decoding with capture, from a shared prompt prefix computed once."""

    def __init__(self, model: Any, prefix: Sequence[int]) -> None:
        self.model = model
        self.base = model.model
        cfg = model.config
        self.L = cfg.num_hidden_layers
        self.Hq = cfg.num_attention_heads
        self.Hkv = getattr(cfg, "num_key_value_heads", None) or self.Hq
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.Hq
        self.scaling = self.D**-0.5
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._packed = _pack_linears(model)
        self.prefix = [int(t) for t in prefix]
        self.p = len(self.prefix)
        self.prefix_hidden: torch.Tensor | None = None
        self.prefix_attn_packed: torch.Tensor | None = None
        self.prefix_kv: torch.Tensor | None = None
        if self.p:
            ids = torch.tensor([self.prefix], device=self.device)
            pos = torch.arange(self.p, device=self.device)[None]
            mask = torch.ones((1, self.p), dtype=torch.bool, device=self.device)
            kv = self._new_cache(1, self.p)
            hs, at = self._forward(ids, pos, kv, 0, mask)
            self.prefix_hidden = hs.float().cpu()  # [L+1, p, H]
            r, c = torch.tril_indices(self.p, self.p)
            self.prefix_attn_packed = at[:, 0][..., r, c].float().cpu()
            self.prefix_kv = kv

    def _linear(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed.get(id(module))
        if packed is None:
            return module(x)
        return packed_linear(x, packed, module.bias)

    def _mlp(self, mlp: Any, x: torch.Tensor) -> torch.Tensor:
        if id(mlp.down_proj) not in self._packed:
            return mlp(x)
        gate = self._linear(mlp.gate_proj, x)
        return self._linear(mlp.down_proj, mlp.act_fn(gate) * self._linear(mlp.up_proj, x))

    def _first_pass(
        self, suffixes: Sequence[Sequence[int]], room: int
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run every sequence's tokens after the prefix in one pass from the prefix's cache.

        The suffixes are left-padded to a common width; padding rows are never computed.
        Returns hidden states ``[L+1, sum(lens), H]`` (sequence after sequence), attention
        ``[L, B, heads, width, p+width]``, the KV cache (``room`` free positions left), the key
        mask ``[B, p+width]`` and the positions ``[B, width]``.
        """
        p = self.p
        lens = [len(s) for s in suffixes]
        B, width = len(suffixes), max(lens)
        ids = torch.zeros((B, width), dtype=torch.long)  # padding: never computed
        pos = torch.full((B, width), p, dtype=torch.long)
        key_mask = torch.zeros((B, p + width), dtype=torch.bool)
        key_mask[:, :p] = True
        for b, (suffix, s) in enumerate(zip(suffixes, lens, strict=True)):
            ids[b, width - s :] = torch.tensor(list(suffix))
            pos[b, width - s :] = torch.arange(p, p + s)
            key_mask[b, p + width - s :] = True
        real = torch.cat(
            [torch.arange(b * width + width - s, (b + 1) * width) for b, s in enumerate(lens)]
        )
        ids, pos, key_mask = ids.to(self.device), pos.to(self.device), key_mask.to(self.device)
        kv = self._new_cache(B, p + width + room)
        if self.prefix_kv is not None:
            kv[..., :p, :] = self.prefix_kv
        own = _own_index(key_mask, lens, p)
        hs, at = self._forward(ids, pos, kv, p, key_mask, real.to(self.device), own)
        return hs, at, kv, key_mask, pos

    def _new_cache(self, batch: int, length: int) -> torch.Tensor:
        """Keys and values of every layer: ``[L, 2, batch, kv_heads, length, head_dim]``."""
        shape = (self.L, 2, batch, self.Hkv, length, self.D)
        return torch.empty(shape, dtype=self.dtype, device=self.device)  # filled before read

    def _forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        kv: torch.Tensor,
        T: int,
        key_mask: torch.Tensor,
        rows: torch.Tensor | None = None,
        own: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Run ``ids [B, n]`` at positions ``pos`` after the ``T`` keys cached in ``kv``.

        Writes the new keys/values into ``kv[..., T:T+n, :]`` in place. ``key_mask [B, T+n]``
        marks real (non-pad) keys. ``rows`` (indices into the flattened ``B*n`` positions) are
        the positions worth computing: the linear layers and norms run on those rows only
        (left padding and finished sequences cost nothing there); the other positions get
        zero queries, keys and values, and their keys are masked. Returns hidden states
        ``[L+1, R, H]`` of the computed rows (all ``B*n`` when ``rows`` is None, in that
        order; transformers' convention: the last one after the final norm) and attention
        ``[L, B, heads, n, T+n]`` or, given ``own`` (flat indices into a head's ``[n, T+n]``
        plane, one tensor per sequence), only those cells: ``[L, heads, len(own[b])]`` per
        sequence, gathered layer by layer (the padded maps of a long pass are never all held).
        """
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        B, n = ids.shape
        flat = ids.reshape(B * n) if rows is None else ids.reshape(B * n).index_select(0, rows)
        h = self.base.embed_tokens(flat)  # [R, H]
        cos, sin = self.base.rotary_emb(h, pos)

        def spread(t: torch.Tensor, heads: int) -> torch.Tensor:
            """Rows ``[R, heads*D]`` -> ``[B, heads, n, D]``, zeros where not computed."""
            if rows is not None:
                full = t.new_zeros((B * n, t.shape[-1]))
                full.index_copy_(0, rows, t)
                t = full
            return t.view(B, n, heads, self.D).transpose(1, 2)

        causal = torch.ones((n, T + n), dtype=torch.bool, device=self.device).tril(T)
        allowed = causal[None] & key_mask[:, None, :]  # [B, n, T+n]
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=self.device)
        bias.masked_fill_(~allowed, torch.finfo(torch.float32).min)
        bias = bias[:, None]  # [B, 1, n, T+n]
        G = self.Hq // self.Hkv
        hiddens = h.new_empty((self.L + 1, *h.shape))  # filled layer by layer: no stacked copy
        hiddens[0] = h
        attns = []
        kept = [torch.empty((self.L, self.Hq, len(ix)), device=self.device) for ix in own or ()]
        lin = self._linear
        for i, layer in enumerate(self.base.layers):
            att = layer.self_attn
            x = layer.input_layernorm(h)
            q = spread(lin(att.q_proj, x), self.Hq)
            k = spread(lin(att.k_proj, x), self.Hkv)
            v = spread(lin(att.v_proj, x), self.Hkv)
            if hasattr(att, "q_norm"):
                q, k = att.q_norm(q), att.k_norm(k)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            kv[i, 0, :, :, T : T + n] = k
            kv[i, 1, :, :, T : T + n] = v
            K, V = kv[i, 0, :, :, : T + n], kv[i, 1, :, :, : T + n]
            # grouped-query attention without repeating K/V: query head h uses kv head h // G
            qg = q.reshape(B, self.Hkv, G * n, self.D)
            scores = torch.matmul(qg, K.transpose(-1, -2)).view(B, self.Hq, n, T + n).float()
            scores.mul_(self.scaling).add_(bias)  # in place: one layer's maps alive, not three
            probs = torch.softmax(scores, dim=-1)
            del scores
            if own is None:
                attns.append(probs)
            else:
                for b, ix in enumerate(own):
                    kept[b][i] = probs[b].view(self.Hq, n * (T + n)).index_select(-1, ix)
            out = torch.matmul(probs.to(V.dtype).view(B, self.Hkv, G * n, T + n), V)
            del probs  # not held while the next layer's scores are computed
            out = out.view(B, self.Hq, n, self.D).transpose(1, 2).reshape(B * n, self.Hq * self.D)
            if rows is not None:
                out = out.index_select(0, rows)
            h = h + lin(att.o_proj, out)
            h = h + self._mlp(layer.mlp, layer.post_attention_layernorm(h))
            hiddens[i + 1] = h
        hiddens[-1] = self.base.norm(h)
        return hiddens, (kept if own is not None else torch.stack(attns))

    @torch.inference_mode()
    def decode(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        eos_ids: Sequence[int],
        pad_id: int,
        record: bool = True,
    ) -> list[Decoded]:
        """Greedy-decode each prompt (all start with the prefix) and capture its trace.

        ``record=False`` decodes without keeping any row (benchmarks use it to price capture).
        """
        p = self.p
        for ids in prompts:
            if list(ids[:p]) != self.prefix or len(ids) <= p:
                raise ValueError(
                    "every prompt must start with the decoder's prefix and go beyond it"
                )
        rows = [_Row(i, list(ids[p:])) for i, ids in enumerate(prompts)]
        eos = set(int(e) for e in eos_ids)
        B = len(rows)
        lens = [len(r.suffix) for r in rows]
        hs, own, kv, key_mask, pos = self._first_pass([r.suffix for r in rows], max_new_tokens + 1)
        T = p + max(lens)
        ends = torch.tensor(lens).cumsum(0)
        for b, r in enumerate(rows):
            if record:
                r.hidden.append(hs[:, int(ends[b]) - lens[b] : int(ends[b])])
                r.attn.append(own[b])
        next_pos = pos[:, -1] + 1
        chosen = self._choose(hs[-1][(ends - 1).to(self.device)], rows)
        slots: list[int | None] = list(range(B))  # batch slot -> row (None: finished)
        alive = list(range(B))
        while True:
            x = torch.tensor(chosen, device=self.device)[:, None]
            ones = torch.ones((len(slots), 1), dtype=torch.bool, device=self.device)
            key_mask = torch.cat([key_mask, ones], 1)
            # finished sequences not yet dropped from the batch are not computed
            live = None if len(alive) == len(slots) else torch.tensor(alive, device=self.device)
            hs, at = self._forward(x, next_pos[:, None], kv, T, key_mask, live)
            T += 1
            for j, slot in enumerate(alive):
                r = rows[slots[slot]]
                if record:
                    r.hidden.append(hs[:, j : j + 1])
                    r.attn.append(at[:, slot, :, 0][..., key_mask[slot]])
                r.finished = chosen[slot] in eos
                if r.finished or len(r.answer) >= max_new_tokens:
                    slots[slot] = None
            last = {slot: hs[-1][j] for j, slot in enumerate(alive)}  # final-norm rows
            alive = [s for s, b in enumerate(slots) if b is not None]
            if not alive:
                break
            if 4 * (len(slots) - len(alive)) >= len(slots):
                # drop finished sequences; amortized, so the cache is copied only now and then
                idx = torch.tensor(alive, dtype=torch.long, device=self.device)
                compact = self._new_cache(len(alive), kv.shape[4])
                compact[..., :T, :] = kv[..., :T, :].index_select(2, idx)
                kv, key_mask, next_pos = compact, key_mask[idx], next_pos[idx]
                last = {j: last[s] for j, s in enumerate(alive)}
                slots = [slots[s] for s in alive]
                alive = list(range(len(slots)))
            next_pos = next_pos + 1
            picked = self._choose(
                torch.stack([last[s] for s in alive]), [rows[slots[s]] for s in alive]
            )
            chosen = [pad_id] * len(slots)
            for s, t in zip(alive, picked, strict=True):
                chosen[s] = t
        if not record:
            none = torch.empty(0)
            return [Decoded(r.answer, r.finished, none, none, r.logprobs, r.entropy) for r in rows]
        return [self._assemble(r) for r in rows]

    @torch.inference_mode()
    def teacher_force(
        self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]
    ) -> list[Decoded]:
        """Capture given answers: one pass over each whole sequence (prompt + answer).

        Every sequence must start with the decoder's prefix, and its prompt must go beyond it.
        The rows are those of a teacher-forced forward pass (same function as :meth:`decode`'s
        prefill); ``logprobs``/``entropy`` are those of each answer token given what precedes.
        """
        p = self.p
        for seq, plen in zip(sequences, prompt_lens, strict=True):
            if list(seq[:p]) != self.prefix or not p < plen <= len(seq):
                raise ValueError("every sequence must start with the prefix, its prompt beyond it")
        lens = [len(s) - p for s in sequences]
        hs, own, _, _, _ = self._first_pass([s[p:] for s in sequences], 0)
        out = []
        end = 0
        for b, (seq, s, plen) in enumerate(zip(sequences, lens, prompt_lens, strict=True)):
            end += s
            hidden = hs[:, end - s : end]  # rows p..S-1
            answer = [int(t) for t in seq[plen:]]
            # the logits at position i predict token i + 1: answer tokens from rows plen-1..S-2
            logits = self._linear(
                self.model.lm_head, hidden[-1, plen - 1 - p : plen - 1 - p + len(answer)]
            )
            _, lp, ent = token_stats(logits, torch.tensor(answer, dtype=torch.long))
            out.append(Decoded(answer, False, hidden.float().cpu(), own[b].float().cpu(), lp, ent))
        return out

    def _choose(self, last_hidden: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
        """Greedy pick from the final-norm hidden state; record log-prob and entropy."""
        out, lps, ents = token_stats(self._linear(self.model.lm_head, last_hidden))
        for r, t, a, e in zip(rows, out, lps, ents, strict=True):
            r.answer.append(int(t))
            r.logprobs.append(a)
            r.entropy.append(e)
        return out

    def _assemble(self, r: _Row) -> Decoded:
        hidden = torch.cat(r.hidden, dim=1).float().cpu()  # [L+1, S-p, H]
        packed = torch.cat(r.attn, dim=-1).float().cpu()  # rows p..S-1, packed
        return Decoded(r.answer, r.finished, hidden, packed, r.logprobs, r.entropy)

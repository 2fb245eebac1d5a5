"""One layer's skip transcoder during training: closed-form skip, BatchTopK sparse part.

The layer maps the MLP input ``x`` to the MLP output ``y`` as (model units)::

    ŷ = x W_skipᵀ + JumpReLU_θ(x W_encᵀ + b_enc) W_dec + b_dec

* ``W_skip`` (and the constant part of ``b_dec``) is a ridge regression of ``y`` on ``[x, 1]``
  solved from float64 normal equations (:class:`SkipFit`) before the sparse part is trained.
* The sparse part is trained on the residual ``r = y − skip(x)``, in normalized units
  (``x / s_in``, ``r / s_r``, one RMS scale per layer), with BatchTopK (Bussmann et al. 2024):
  the ``k · n`` largest pre-activations of a batch of ``n`` tokens are kept. Encoder product in
  bfloat16 (the only dense product), everything sparse in float32: decoding gathers the active
  decoder rows, and the gradients of ``W_enc``/``W_dec`` touch only the active rows
  (``index_add_``); Adam on float32 master weights; decoder rows kept at unit norm.
* AuxK (Gao et al. 2024): features inactive for ``dead_tokens`` tokens are dead; the
  ``k_aux`` largest dead pre-activations of each token are trained to predict the remaining
  error (coefficient ``aux_coef``).
* Dead features are re-initialized every ``resample_every`` steps toward badly reconstructed
  tokens (:meth:`SkipTranscoder.resample_dead`).
* Exported as circuit-tracer's JumpReLU with one threshold θ for all features: the running
  mean of the batches' BatchTopK thresholds (what BatchTopK does at inference);
  :mod:`.calibrate` raises it to a target L0 on the attribution's prompt format.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from hallugraph.attribution.transcoders.skip import RIDGES, SkipFit, fit_skip

__all__ = [
    "RESAMPLE_RATE",
    "RIDGES",
    "SkipFit",
    "SkipTranscoder",
    "exported_forward",
    "fit_skip",
    "sparse_forward",
]


#: a resampled feature starts firing on this share of ``k / width`` of the batch's tokens
RESAMPLE_RATE = 0.5


def sparse_forward(
    z: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Active entries of ``z > threshold`` (``threshold ≥ 0``): ``rows, cols, values`` and the
    embedding_bag offsets (rows are sorted)."""
    rows, cols = (z > threshold).nonzero(as_tuple=True)
    vals = z.reshape(-1).index_select(0, rows * z.shape[1] + cols).float()
    counts = torch.bincount(rows, minlength=z.shape[0])
    offsets = torch.zeros(z.shape[0], dtype=torch.long)
    offsets[1:] = counts.cumsum(0)[:-1]
    return rows, cols, vals, offsets


def _decode(cols, vals, offsets, w_dec: torch.Tensor) -> torch.Tensor:
    return F.embedding_bag(cols, w_dec, offsets, mode="sum", per_sample_weights=vals)


class SkipTranscoder(nn.Module):
    """Trainable state of one layer (normalized units; see the module docstring)."""

    def __init__(self, d_model: int, width: int, k: int, *, seed: int = 0) -> None:
        super().__init__()
        if not 0 < k <= width:
            raise ValueError(f"k must be in 1..width ({width}), not {k}")
        self.k = k
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(width, d_model, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.clone())  # encoder = decoderᵀ at start (Gao et al.)
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        for name in ("in_scale", "res_scale", "threshold"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))
        self.register_buffer("W_skip", torch.zeros(d_model, d_model, dtype=torch.float64))
        self.register_buffer("b_skip", torch.zeros(d_model, dtype=torch.float64))
        self.register_buffer("last_active", torch.zeros(width, dtype=torch.long))
        self._enc_bf16: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return int(self.W_enc.shape[0])

    def set_skip(self, w: torch.Tensor, b: torch.Tensor) -> None:
        self.W_skip.copy_(w)
        self.b_skip.copy_(b)

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """``x W_skipᵀ + b_skip`` in model units (float32)."""
        return x @ self.W_skip.float().T + self.b_skip.float()

    def init_scales(self, x: torch.Tensor, r: torch.Tensor) -> None:
        """Per-layer RMS scales of input and residual, and ``b_dec`` = mean residual."""
        self.in_scale.fill_(float(x.double().pow(2).mean().sqrt()))
        self.res_scale.fill_(float(r.double().pow(2).mean().sqrt()))
        with torch.no_grad():
            self.b_dec.copy_((r / float(self.res_scale)).mean(0))

    @torch.no_grad()
    def init_from_data(
        self, x: torch.Tensor, r: torch.Tensor, gen: torch.Generator, enc_scale: float = 0.1
    ) -> None:
        """Data initialization (after :meth:`init_scales`): feature ``f`` starts as a
        prototype token ``i`` of ``x, r`` (drawn without replacement when there are enough
        tokens), with its decoder row the direction of that token's residual ``r_i`` and its
        encoder row the direction of its centred input ``x_i − x̄`` times ``enc_scale`` (codes
        start small). Tokens drawn twice get a little noise, so that features differ."""
        xn = x / float(self.in_scale)
        rn = r / float(self.res_scale)
        n = x.shape[0]
        if n >= self.width:
            idx = torch.randperm(n, generator=gen)[: self.width]
        else:
            idx = torch.cat(
                [
                    torch.randperm(n, generator=gen),
                    torch.randint(0, n, (self.width - n,), generator=gen),
                ]
            )
        mu = xn.mean(0)
        xc, rc = xn[idx] - mu, rn[idx].clone()
        dup = torch.zeros(self.width, dtype=torch.bool)
        dup[min(n, self.width) :] = True
        for m in (xc, rc):
            noise = torch.randn(m.shape, generator=gen) * m.norm(dim=1, keepdim=True)
            m[dup] += 0.3 * noise[dup] / math.sqrt(m.shape[1])
        w = enc_scale * xc / xc.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_enc.copy_(w)
        self.b_enc.copy_(-(w @ mu))
        self.W_dec.copy_(rc / rc.norm(dim=1, keepdim=True).clamp_min(1e-8))
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the bfloat16 copy of the encoder (after an update or a load)."""
        self._enc_bf16 = None

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        if self._enc_bf16 is None:
            self._enc_bf16 = self.W_enc.detach().to(torch.bfloat16)
        z = F.linear(xn.to(torch.bfloat16), self._enc_bf16, self.b_enc.detach().bfloat16())
        return z

    @torch.no_grad()
    def batch_threshold(self, z: torch.Tensor, gen: torch.Generator, sample: int) -> float:
        """The BatchTopK threshold: the ``k·n``-th largest pre-activation (estimated on a
        random sample of ``sample`` entries when ``z`` is larger), at least 0."""
        flat = z.reshape(-1)
        keep = self.k / self.width
        if flat.numel() > sample:
            flat = flat[torch.randint(0, flat.numel(), (sample,), generator=gen)]
        m = flat.numel()
        pos = max(1, min(m, m - int(round(m * keep)) + 1))
        t = float(torch.kthvalue(flat.float(), pos).values)
        return max(t, 0.0)

    @torch.no_grad()
    def train_step(
        self,
        x: torch.Tensor,
        r: torch.Tensor,
        *,
        gen: torch.Generator,
        tokens_seen: int,
        dead_tokens: int,
        k_aux: int,
        aux_coef: float,
        sample: int = 262144,
        ema: float = 0.9,
    ) -> dict[str, float]:
        """Gradients (into ``.grad``) of one batch; ``x`` MLP input, ``r`` residual target,
        both model units, float32 ``[n, d]``. Returns the batch's statistics."""
        n, d = r.shape
        xn = x / float(self.in_scale)
        rn = r / float(self.res_scale)
        z = self._encode(xn)
        t = self.batch_threshold(z, gen, sample)
        th = float(self.threshold)
        self.threshold.fill_(t if th == 0.0 else ema * th + (1 - ema) * t)
        rows, cols, vals, offsets = sparse_forward(z, t)
        w_dec = self.W_dec.detach()
        rec = _decode(cols, vals, offsets, w_dec) + self.b_dec.detach()
        err = rec - rn
        sse = float(err.pow(2).sum())
        g_rec = err * (2.0 / (n * d))
        g_wdec = torch.zeros_like(w_dec)
        g_wenc = torch.zeros_like(w_dec)
        g_benc = torch.zeros(self.width)
        self._accumulate(rows, cols, vals, g_rec, xn, w_dec, g_wdec, g_wenc, g_benc)
        self.last_active[cols] = tokens_seen + n
        dead = (tokens_seen + n - self.last_active) > dead_tokens
        aux = 0.0
        n_dead = int(dead.sum())
        if n_dead and aux_coef > 0 and k_aux > 0:
            dead_idx = dead.nonzero(as_tuple=True)[0]
            zd = z[:, dead_idx].float()
            kk = min(k_aux, n_dead)
            v, j = torch.topk(zd, kk, dim=1)
            on = v > 0
            a_rows = torch.arange(n).repeat_interleave(kk).reshape(n, kk)[on]
            a_cols, a_vals = dead_idx[j[on]], v[on]
            counts = torch.bincount(a_rows, minlength=n)
            a_off = torch.zeros(n, dtype=torch.long)
            a_off[1:] = counts.cumsum(0)[:-1]
            e = -err
            rec_aux = _decode(a_cols, a_vals, a_off, w_dec)
            denom = float(e.pow(2).sum()) + 1e-12
            aux = aux_coef * float((rec_aux - e).pow(2).sum()) / denom
            g_aux = (rec_aux - e) * (2.0 * aux_coef / denom)
            self._accumulate(a_rows, a_cols, a_vals, g_aux, xn, w_dec, g_wdec, g_wenc, g_benc)
        # keep decoder rows at unit norm: drop the gradient's radial part
        g_wdec -= (g_wdec * w_dec).sum(1, keepdim=True) * w_dec
        self.W_dec.grad = g_wdec
        self.W_enc.grad = g_wenc
        self.b_enc.grad = g_benc
        self.b_dec.grad = g_rec.sum(0)
        return {
            "sse": sse,
            "fvu": sse / max(float((rn - rn.mean(0)).pow(2).sum()), 1e-12),
            "l0": float(rows.numel()) / n,
            "dead": n_dead / self.width,
            "aux": aux,
        }

    @staticmethod
    def _accumulate(rows, cols, vals, g, xn, w_dec, g_wdec, g_wenc, g_benc) -> None:
        """Gradients of a sparse code ``(rows, cols, vals)`` (rows sorted) decoded by ``w_dec``
        whose output gradient is ``g``: sparse products, no ``[nnz, d]`` temporaries."""
        n, width = g.shape[0], w_dec.shape[0]
        crow = torch.zeros(n + 1, dtype=torch.long)
        crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(crow, cols, vals, (n, width), check_invariants=False)
        g_vals = torch.sparse.sampled_addmm(pattern, g, w_dec.T, beta=0.0).values()
        order = torch.argsort(cols * n + rows)
        idx = torch.stack([cols[order], rows[order]])
        a_t = torch.sparse_coo_tensor(
            idx, vals[order], (width, n), is_coalesced=True, check_invariants=False
        )
        g_wdec += torch.sparse.mm(a_t, g)
        ga_t = torch.sparse_coo_tensor(
            idx, g_vals[order], (width, n), is_coalesced=True, check_invariants=False
        )
        g_wenc += torch.sparse.mm(ga_t, xn)
        g_benc.index_add_(0, cols, g_vals)

    @torch.no_grad()
    def resample_dead(
        self,
        x: torch.Tensor,
        r: torch.Tensor,
        *,
        tokens_seen: int,
        dead_tokens: int,
        gen: torch.Generator,
        opt: torch.optim.Optimizer,
        init: str = "calibrated",
    ) -> int:
        """Re-initialize the dead features (inactive for ``dead_tokens`` tokens) on tokens of
        this batch drawn with probability ∝ their squared error (Bricken et al. 2023's
        resampling, in the data-init form): decoder row = the token's error direction, encoder
        row along its centred input direction. Returns how many.

        ``init="calibrated"``: the encoder row gets the median norm of the live features' rows
        and a bias that makes the feature fire on :data:`RESAMPLE_RATE` × ``k / width`` of this
        batch's tokens; Adam's first moments of those rows are zeroed and their second
        moments set to the live rows' median, so that the next steps have the live features'
        size. ``init="token"`` (the v2 preset): the row fires at 1.5 × the threshold on its
        token only (an encoder ~25× shorter than the live ones: the feature fires on almost
        nothing and dies again) and both moments are zeroed (with Adam's step count far from
        0, the first updates are then several × lr per coordinate)."""
        if init not in ("calibrated", "token"):
            raise ValueError(f"init must be 'calibrated' or 'token', not {init!r}")
        age = tokens_seen - self.last_active
        dead = (age > dead_tokens).nonzero(as_tuple=True)[0]
        if not len(dead):
            return 0
        live = (age <= dead_tokens).nonzero(as_tuple=True)[0]
        xn = x / float(self.in_scale)
        rn = r / float(self.res_scale)
        z = self._encode(xn)
        rows, cols, vals, offsets = sparse_forward(z, float(self.threshold))
        e = rn - (_decode(cols, vals, offsets, self.W_dec.detach()) + self.b_dec.detach())
        idx = torch.multinomial(
            e.pow(2).sum(1).double(), len(dead), replacement=True, generator=gen
        )
        mu = xn.mean(0)
        xc = xn[idx] - mu
        norm = xc.norm(dim=1, keepdim=True).clamp_min(1e-8)
        th = max(float(self.threshold), 1e-3)
        if init == "token" or not len(live):
            w = xc / norm * (1.5 * th / norm)
            b = -(w @ mu)
        else:
            w = xc / norm * float(self.W_enc[live].norm(dim=1).median())
            proj = (xn - mu) @ w.T  # [n, dead]
            q = max(1, int(round(RESAMPLE_RATE * self.k / self.width * xn.shape[0])))
            b = th - torch.topk(proj, min(q, proj.shape[0]), dim=0).values[-1] - (w @ mu)
        self.W_enc[dead] = w
        self.b_enc[dead] = b
        self.W_dec[dead] = e[idx] / e[idx].norm(dim=1, keepdim=True).clamp_min(1e-8)
        for p in (self.W_enc, self.b_enc, self.W_dec):
            state = opt.state.get(p, {})
            for name, v in state.items():
                if not (torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == self.width):
                    continue
                if name == "exp_avg_sq" and init == "calibrated" and len(live):
                    v[dead] = v[live].median(dim=0).values
                else:
                    v[dead] = 0
        self.last_active[dead] = tokens_seen
        self.invalidate()
        return len(dead)

    @torch.no_grad()
    def after_step(self) -> None:
        """Renormalize decoder rows; drop the stale bfloat16 encoder."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        self.invalidate()

    @torch.no_grad()
    def export(self) -> dict[str, torch.Tensor]:
        """circuit-tracer's tensors (model units, float32): W_enc, b_enc, W_dec, b_dec,
        W_skip, activation_function.threshold."""
        s_in, s_r = float(self.in_scale), float(self.res_scale)
        return {
            "W_enc": (self.W_enc.double() / s_in).float().contiguous(),
            "b_enc": self.b_enc.detach().float().clone(),
            "W_dec": (self.W_dec.double() * s_r).float().contiguous(),
            "b_dec": (self.b_dec.double() * s_r + self.b_skip).float().contiguous(),
            "W_skip": self.W_skip.float().contiguous(),
            "activation_function.threshold": torch.full(
                (self.width,), float(self.threshold), dtype=torch.float32
            ),
        }


def exported_forward(
    t: dict[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction and activations of exported tensors (circuit-tracer's formula)."""
    z = F.linear(x, t["W_enc"], t["b_enc"])
    th = t.get("activation_function.threshold")
    a = torch.relu(z) if th is None else z * (z > th)
    rec = a @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        rec = rec + x @ t["W_skip"].T
    return rec, a

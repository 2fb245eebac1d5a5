"""The ``predictive`` trace codec: lossless fp16 storage of a trace as residuals of a prediction.

Every stored tensor of a trace is (almost) a deterministic function of the previous layer's
*stored* fp16 hidden state: the embeddings are ``embed_tokens(tokens)``, layer ``l``'s output
and attention map are the decoder layer applied to ``h_l`` (the last output also through the
final norm). So instead of the fp16 values we store how far they are from that prediction:

1. from the stored fp16 ``h_l`` (cast to fp32) run layer ``l`` exactly (RMSNorm, q/k/v
   projections, optional q/k norms (Qwen3), RoPE, causal softmax attention with grouped keys,
   output projection, residual, RMSNorm, gated MLP, residual), cast the result to fp16;
2. map fp16 bit patterns to monotone integers (:func:`ordered_int`) and keep the integer
   difference ``stored - predicted`` (most are 0 or +-1, 2 ulps);
3. zigzag, narrowest of uint8/uint16/uint32, byte shuffle, zstd (:func:`residuals_to_bytes`).

Decoding runs the same steps in order: ``h_0`` = prediction + residual, then layer by layer
from the *decoded* ``h_l``. Encoder and decoder call the same code on the same fp16 inputs
with the same shapes (one trace, batch 1, the shared prefix rows included as keys/values), so
decoding is bit-exact whatever the model's precision: the prediction only needs to be close,
never right.

**Determinism caveat.** Bit-exactness needs the decoder's floating-point arithmetic to equal
the encoder's: the same weights (checked: :func:`weights_fingerprint` is kept in ``run.json``)
and the same kernels — same machine type, torch/BLAS build and, possibly, thread count. Each
encoded tensor carries a blake2b digest of its fp16 bytes, so a decode that comes out
different raises :class:`hallugraph.store.StoreError` instead of returning wrong numbers.
Predictions always run in fp32 on the CPU, whatever device and dtype extracted the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from hallugraph.store.integrity import StoreError
from hallugraph.store.layout import tril_size
from hallugraph.store.predictor import CODEC_VERSION, Predictor, as_predictor

ZSTD_LEVEL = 1  # measured on SmolLM2 traces: smaller than 3 (fewer spurious matches), as fast

_MODE_RAW = 0  # fp16 bytes as they are (used when the residuals would not be smaller)
_MODE_RESIDUAL = 1
_HEADER = 28  # version, mode, 2 zero bytes, uint64 element count, blake2b-128 of the fp16 bytes


# --------------------------------------------------------------------------- integer coding


def ordered_int(a: np.ndarray) -> np.ndarray:
    """fp16 values -> int32 in ``[-32768, 32767]``, monotone in the value, one-to-one on bits.

    Non-negative patterns keep their value; a negative pattern ``0x8000 | m`` maps to
    ``-1 - m`` (so ``-0.0`` is -1, just below ``+0.0``). Adjacent fp16 numbers differ by 1.
    """
    u = np.ascontiguousarray(a, dtype=np.float16).view(np.uint16).astype(np.int32)
    return np.where(u < 0x8000, u, 0x7FFF - u)


def from_ordered_int(o: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ordered_int` (int32 in ``[-32768, 32767]`` -> fp16)."""
    o = np.asarray(o, dtype=np.int32)
    return np.where(o >= 0, o, 0x7FFF - o).astype(np.uint16).view(np.float16)


def residuals_to_bytes(residuals: np.ndarray, level: int = ZSTD_LEVEL) -> bytes:
    """Integer residuals (any shape, in ``[-2**31, 2**31)``) -> one width byte + zstd payload.

    Zigzag (``0, -1, 1, -2 ... -> 0, 1, 2, 3 ...``), the narrowest unsigned type that holds every
    value (1, 2 or 4 bytes), byte shuffle (all low bytes, then the next byte ...), zstd.
    """
    r = np.asarray(residuals).astype(np.int64).ravel()
    zz = ((r << 1) ^ (r >> 63)).astype(np.uint64)
    top = int(zz.max()) if zz.size else 0
    if top >= 2**32:
        raise ValueError("residuals must fit in 32-bit signed integers")
    width = 1 if top < 2**8 else 2 if top < 2**16 else 4
    u = zz.astype({1: "<u1", 2: "<u2", 4: "<u4"}[width])
    shuffled = u.view(np.uint8).reshape(-1, width).T.tobytes()
    return bytes([width]) + zstandard.ZstdCompressor(level=level).compress(shuffled)


def bytes_to_residuals(data: bytes | np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`residuals_to_bytes`: ``count`` residuals as a flat int64 array."""
    if not isinstance(data, bytes):
        data = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    width = data[0]
    if width not in (1, 2, 4):
        raise StoreError(f"corrupt residual block (width byte {width})")
    raw = zstandard.ZstdDecompressor().decompress(data[1:], max_output_size=count * width)
    if len(raw) != count * width:
        raise StoreError(f"corrupt residual block ({len(raw)} bytes for {count} values)")
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(width, count)
    zz = np.ascontiguousarray(planes.T).view({1: "<u1", 2: "<u2", 4: "<u4"}[width]).ravel()
    zz = zz.astype(np.int64)
    return (zz >> 1) ^ -(zz & 1)


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


def _pack_block(stored: np.ndarray, predicted: np.ndarray, level: int) -> np.ndarray:
    """One tensor as a uint8 block: header + residuals (or the raw fp16 bytes if smaller)."""
    stored = np.ascontiguousarray(stored, dtype=np.float16)
    payload = residuals_to_bytes(ordered_int(stored) - ordered_int(predicted), level)
    mode = _MODE_RESIDUAL
    if len(payload) >= stored.nbytes:
        mode, payload = _MODE_RAW, stored.tobytes()
    header = (
        bytes([CODEC_VERSION, mode, 0, 0])
        + np.uint64(stored.size).astype("<u8").tobytes()
        + _digest(stored)
    )
    return np.frombuffer(header + payload, dtype=np.uint8)


class _Block:
    """A stored block, parsed: residuals (or raw values) to add to predictions slice by slice."""

    def __init__(self, block: np.ndarray, shape: tuple[int, ...], what: str) -> None:
        data = np.ascontiguousarray(block, dtype=np.uint8).tobytes()
        if len(data) < _HEADER or data[0] != CODEC_VERSION:
            raise StoreError(f"corrupt or unknown predictive block for {what}")
        count = int(np.frombuffer(data[4:12], dtype="<u8")[0])
        if count != int(np.prod(shape)):
            raise StoreError(f"predictive block for {what} holds {count} values, not {shape}")
        self.digest = data[12:_HEADER]
        self.shape = shape
        self.what = what
        self.raw: np.ndarray | None = None
        self.residuals: np.ndarray | None = None
        if data[1] == _MODE_RAW:
            self.raw = np.frombuffer(data[_HEADER:], dtype=np.float16).reshape(shape)
        else:
            self.residuals = bytes_to_residuals(data[_HEADER:], count).reshape(shape)

    def value(self, i: int, predicted: np.ndarray | None, verify: bool = True) -> np.ndarray:
        """Slice ``i`` of the decoded tensor, given its prediction (unused by a raw block)."""
        if self.raw is not None:
            return self.raw[i]
        o = ordered_int(predicted) + self.residuals[i]
        if o.size and (o.min() < -32768 or o.max() > 32767):
            if verify:
                raise self.mismatch()
            o = np.clip(o, -32768, 32767)
        return from_ordered_int(o)

    def check(self, decoded: np.ndarray) -> None:
        if _digest(decoded) != self.digest:
            raise self.mismatch()

    def mismatch(self) -> StoreError:
        return StoreError(
            f"predictive decoding of {self.what} did not reproduce the stored fp16 values "
            "(checksum mismatch): the decoder's arithmetic differs from the encoder's. Decode on "
            "the machine type and torch build that extracted the run (and with the same torch "
            "thread count), or open it with TraceStore(run, verify=False) to accept values "
            "that may differ from the stored ones by a few fp16 ulps."
        )


# --------------------------------------------------------------------------- traces


def _layer_input(prefix: np.ndarray, own: np.ndarray, layer: int) -> np.ndarray:
    """Rows ``0..S-1`` of ``h_layer``: shared prefix rows, then the trace's own rows (fp16).

    Encoder and decoder both build every layer input here, so their inputs are identical.
    """
    return np.concatenate([prefix[layer], own[layer]], axis=0)


def _check_shapes(pred: Predictor, tokens: Sequence[int], prefix_hidden: np.ndarray) -> int:
    L, H = pred.num_layers, pred.hidden_size
    p = prefix_hidden.shape[1]
    if prefix_hidden.shape != (L + 1, p, H):
        raise StoreError(
            f"prefix hidden states {prefix_hidden.shape} do not fit the model ({L + 1}, p, {H})"
        )
    if len(tokens) < p:
        raise StoreError(f"a trace of {len(tokens)} tokens is shorter than its {p}-token prefix")
    return p


def encode_trace(
    predictor: Predictor,
    tokens: Sequence[int],
    prefix_hidden: np.ndarray,
    hidden_states: np.ndarray,
    attentions: np.ndarray,
    level: int = ZSTD_LEVEL,
) -> dict[str, np.ndarray]:
    """Encode one trace's own rows as predictive blocks (uint8 arrays safetensors can hold).

    ``prefix_hidden [L+1, p, H]`` fp16 are the run's shared prefix rows (as stored, they are
    the decoder's inputs too); ``hidden_states [L+1, S-p, H]`` and packed ``attentions
    [L, heads, tril(S)-tril(p)]`` are the fp16 rows ``p..S-1`` to store. Returns
    ``{"hidden_states": uint8[...], "attentions": uint8[...]}``.
    """
    p = _check_shapes(predictor, tokens, prefix_hidden)
    S = len(tokens)
    own_h = np.ascontiguousarray(hidden_states, dtype=np.float16)
    own_a = np.ascontiguousarray(attentions, dtype=np.float16)
    L = predictor.num_layers
    want_h = (L + 1, S - p, predictor.hidden_size)
    want_a = (L, predictor.num_heads, tril_size(S) - tril_size(p))
    if own_h.shape != want_h or own_a.shape != want_a:
        raise StoreError(f"trace tensors {own_h.shape}, {own_a.shape} != {want_h}, {want_a}")
    pred_h = np.empty_like(own_h)
    pred_a = np.empty_like(own_a)
    pred_h[0] = predictor.embeddings(tokens, p)
    rope = predictor.rope(S)
    for layer in range(L):
        pred_h[layer + 1], pred_a[layer] = predictor.layer(
            layer, _layer_input(prefix_hidden, own_h, layer), p, rope
        )
    return {
        "hidden_states": _pack_block(own_h, pred_h, level),
        "attentions": _pack_block(own_a, pred_a, level),
    }


def decode_trace(
    predictor: Predictor,
    tokens: Sequence[int],
    prefix_hidden: np.ndarray,
    blocks: Mapping[str, np.ndarray],
    attentions: bool = True,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverse of :func:`encode_trace`: fp16 ``hidden [L+1, S-p, H]`` and packed attention
    rows ``[L, heads, tril(S)-tril(p)]`` (``None`` when ``attentions`` is false or absent).

    Sequential: layer ``l + 1`` is predicted from the decoded layer ``l``. Raises
    :class:`~hallugraph.store.StoreError` if the result's checksum differs from the encoder's
    (``verify=False`` returns whatever came out instead: for measuring how far it is).
    """
    p = _check_shapes(predictor, tokens, prefix_hidden)
    S, L = len(tokens), predictor.num_layers
    bh = _Block(blocks["hidden_states"], (L + 1, S - p, predictor.hidden_size), "hidden states")
    ba = None
    if attentions and "attentions" in blocks:
        shape = (L, predictor.num_heads, tril_size(S) - tril_size(p))
        ba = _Block(blocks["attentions"], shape, "attentions")
    own_h = np.empty(bh.shape, dtype=np.float16)
    own_a = np.empty(ba.shape, dtype=np.float16) if ba is not None else None
    own_h[0] = bh.value(0, predictor.embeddings(tokens, p), verify)
    # raw blocks (stored when residuals were not smaller) need no prediction
    predict = bh.raw is None or (ba is not None and ba.raw is None)
    rope = predictor.rope(S) if predict else None
    for layer in range(L):
        hid = att = None
        if predict:
            hid, att = predictor.layer(layer, _layer_input(prefix_hidden, own_h, layer), p, rope)
        own_h[layer + 1] = bh.value(layer + 1, hid, verify)
        if ba is not None:
            own_a[layer] = ba.value(layer, att, verify)
    if verify:
        bh.check(own_h)
        if ba is not None:
            ba.check(own_a)
    return own_h, own_a


_LOADED: dict[tuple[Any, ...], Predictor] = {}  # the last predictor loaded by name (runs share it)


def predictor_for_run(run_dir: Path, info: Mapping[str, Any], model: Any = None) -> Predictor:
    """The predictor that decodes the predictive run ``run_dir`` (its ``run.json`` is ``info``):
    from ``model`` when given, else the run's model loaded on CPU in its ``model_dtype`` (the
    last one loaded is kept for the next run). Its weights must match the run's fingerprint."""
    if info.get("codec_version") != CODEC_VERSION:
        raise StoreError(
            f"{run_dir} uses predictive codec version {info.get('codec_version')}; "
            f"this version of hallugraph reads version {CODEC_VERSION}"
        )
    want = info.get("codec_fingerprint")
    kernel = info.get("codec_kernel", "aten")
    key = (info.get("model"), info.get("model_dtype"), want, kernel)
    if model is None and key in _LOADED:
        return _LOADED[key]
    pred = as_predictor(model if model is not None else _load_model(run_dir, info), kernel)
    if pred.fingerprint != want:
        raise StoreError(
            f"{run_dir} was encoded with the predictive codec by a model with weights "
            f"fingerprint {want}; the model given to read it has {pred.fingerprint}. "
            "Decoding needs exactly the same weights (same model and model_dtype)."
        )
    if model is None:
        _LOADED.clear()
        _LOADED[key] = pred
    return pred


def _load_model(run_dir: Path, info: Mapping[str, Any]) -> Any:
    from hallugraph.models import ModelError, load_model

    name = info.get("model")
    try:
        return load_model(name, dtype=info.get("model_dtype", "float32"), device="cpu")
    except (ModelError, OSError, ValueError) as err:
        raise StoreError(
            f"{run_dir} is stored with the predictive codec: reading its tensors needs the "
            f"model {name!r}, which could not be loaded ({err}). Pass it: "
            "TraceStore(run, model=...)."
        ) from err

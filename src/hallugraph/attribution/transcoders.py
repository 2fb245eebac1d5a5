"""Per-layer transcoders (PLTs) for a Llama-style model, trained with a plain PyTorch loop and
saved in circuit-tracer's on-disk format.

A transcoder of layer ``i`` reads the MLP's input (the output of
``model.layers[i].post_attention_layernorm``, circuit-tracer's ``mlp.hook_in``) and predicts
the MLP's output (``mlp.hook_out``)::

    a = σ(W_enc x + b_enc)        σ = ReLU, or JumpReLU(θ): z ↦ z·[z > θ]
    ŷ = a W_dec + b_dec

**Training.** Every layer is trained at once from the same forward passes: activations are
generated on the fly from offline text (:func:`corpus_texts`), position 0 (the BOS, whose
features circuit-tracer zeroes) and padding excluded. Inputs and targets are divided by a
per-layer scale (RMS norm / √d, measured on the first batch) so that one sparsity coefficient
suits every layer; the scales are folded back into the saved weights. Loss, per token::

    ReLU:     ‖ŷ − y‖² / d + λ · Σ_f a_f ‖W_dec,f‖ / d          (decoder-norm weighted L1)
    JumpReLU: ‖ŷ − y‖² / d + λ · Σ_f [z_f > θ_f]                 (L0, straight-through for θ)

with Adam. One step = one batch of texts (``batch_texts``) through the model, then one update
per layer on all of the batch's tokens.

**Budgets, resume.** ``tokens`` is a total token budget (over all runs into the same folder);
``time_budget`` limits one invocation (seconds). A checkpoint (weights, Adam state, data cursor,
counters; one safetensors file written atomically) is saved every ``checkpoint_every`` steps and
when training stops; running again into the same folder continues from it, and the result is
the same as one uninterrupted run (a Ctrl-C in the middle of a step keeps that step's partial
update in the checkpoint, so only an interrupt between steps is bit-exact).

**Cost** (measured on SmolLM2-135M, F = 4608, one CPU thread): ~43 training tokens/s, i.e.
~6.5 h per million tokens; evaluation and model loading add ~50 s per call.

**Output** (``out``)::

    layer_{i}.safetensors   W_enc [F, d], W_dec [F, d], b_enc [F], b_dec [d]
                            (+ activation_function.threshold [F] for JumpReLU)
    config.yaml             model_kind: transcoder_set, feature_input_hook: mlp.hook_in,
                            feature_output_hook: mlp.hook_out, scan
    training.json           configuration, data, budgets, counters
    report.json             per layer FVU and L0 on held-out text
    checkpoint.safetensors  the training state

Load it with ``circuit_tracer.ReplacementModel.from_pretrained(model_dir, name,
backend="nnsight")`` and ``$CIRCUIT_TRACER_CACHE_DIR`` = the folder's parent, or with
:func:`hallugraph.attribution.tracer.load_replacement_model`.

**Training text** (:func:`corpus_texts`): prompts rendered exactly as the benchmark renders them
(template + chat template) followed by the reference answer, from

* ``triviaqa``: TriviaQA records from index :data:`TRIVIAQA_START` (2000) on; the benchmark
  only ever uses the first 1000 (``make benchmark-table``; ``make run`` the first 300).
* ``halueval_qa``: the HaluEval questions (with their knowledge as context) that fall in the
  *training* split of the benchmark's seed-0 grouped split of ``halueval_qa_tf`` (all of its
  questions are in the same label stratum, so the split is known before any labeling). The
  generated-answer run ``halueval_qa`` is stratified by its generated labels, so its test split
  may contain some of these questions; use ``sources=("triviaqa",)`` for a strictly disjoint set.

The held-out text for the report is the last ``eval_texts`` texts of the shuffled corpus.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hallugraph.config import cache_dir
from hallugraph.models import LoadedModel, model_slug, render_prompt

__all__ = [
    "ACTIVATIONS",
    "CHECKPOINT",
    "TRIVIAQA_START",
    "TrainConfig",
    "Transcoder",
    "TrainResult",
    "corpus_texts",
    "default_out_dir",
    "evaluate_transcoders",
    "format_report",
    "halueval_train_questions",
    "layer_activations",
    "load_exported",
    "random_transcoder_set",
    "train_transcoders",
    "write_transcoder_set",
]

ACTIVATIONS = ("relu", "jumprelu")
CHECKPOINT = "checkpoint.safetensors"
TRIVIAQA_START = 2000
_BANDWIDTH = 0.05  # JumpReLU straight-through kernel width (in normalized pre-activation units)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (a resumed run must use the same values)."""

    width: int = 4608
    """Features per layer (F); 8·d for SmolLM2-135M (d = 576)."""
    activation: str = "relu"
    sparsity: float = 1.0
    """λ: L1 coefficient (ReLU) or L0 coefficient (JumpReLU, try ~1e-3)."""
    lr: float = 1e-3
    batch_texts: int = 16
    max_len: int = 256
    checkpoint_every: int = 50
    eval_texts: int = 64
    init_threshold: float = 0.1
    seed: int = 0
    sources: tuple[str, ...] = ("triviaqa", "halueval_qa")

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        if self.width < 1 or self.batch_texts < 1 or self.max_len < 2:
            raise ValueError("width, batch_texts must be >= 1 and max_len >= 2")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        object.__setattr__(self, "sources", tuple(self.sources))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{**d, "sources": tuple(d.get("sources", ()))})


# ---------------------------------------------------------------------------------------------
# the module


class _StepSTE(torch.autograd.Function):
    """Heaviside step [z > θ] with a straight-through gradient for θ (none for z)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < _BANDWIDTH / 2).to(z.dtype) / _BANDWIDTH
        return None, (-kernel * grad).sum(dim=0)


class _JumpReLUSTE(torch.autograd.Function):
    """z·[z > θ]; gradient to z where active, straight-through gradient for θ."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < _BANDWIDTH / 2).to(z.dtype) / _BANDWIDTH
        return (z > theta).to(z.dtype) * grad, (-theta * kernel * grad).sum(dim=0)


class Transcoder(nn.Module):
    """One layer's transcoder, in normalized units (``x / in_scale`` → ``y / out_scale``)."""

    def __init__(self, d_model: int, width: int, activation: str = "relu", init_threshold=0.1):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        self.activation = activation
        self.W_enc = nn.Parameter(torch.randn(width, d_model) / math.sqrt(d_model))
        self.b_enc = nn.Parameter(torch.zeros(width))
        w_dec = torch.randn(width, d_model)
        self.W_dec = nn.Parameter(0.1 * w_dec / w_dec.norm(dim=1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        if activation == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((width,), math.log(init_threshold)))
        self.register_buffer("in_scale", torch.ones(()))
        self.register_buffer("out_scale", torch.ones(()))

    @property
    def threshold(self) -> torch.Tensor | None:
        return self.log_threshold.exp() if self.activation == "jumprelu" else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, activations, sparsity per token)`` for normalized inputs."""
        z = x @ self.W_enc.T + self.b_enc
        if self.activation == "relu":
            a = torch.relu(z)
            sparsity = (a * self.W_dec.norm(dim=1)).sum(-1) / x.shape[-1]
        else:
            theta = self.log_threshold.exp()
            a = _JumpReLUSTE.apply(z, theta)
            sparsity = _StepSTE.apply(z, theta).sum(-1)
        return a @ self.W_dec + self.b_dec, a, sparsity

    @torch.no_grad()
    def export(self) -> dict[str, torch.Tensor]:
        """circuit-tracer's tensors, in the model's units (scales folded in), float32."""
        s_in, s_out = float(self.in_scale), float(self.out_scale)
        out = {
            "W_enc": (self.W_enc / s_in).float().contiguous(),
            "W_dec": (self.W_dec * s_out).float().contiguous(),
            "b_enc": self.b_enc.float().contiguous(),
            "b_dec": (self.b_dec * s_out).float().contiguous(),
        }
        if self.activation == "jumprelu":
            out["activation_function.threshold"] = self.log_threshold.exp().float().contiguous()
        return out


def load_exported(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of an exported ``layer_{i}.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(path))


def _exported_forward(t: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    z = x @ t["W_enc"].T + t["b_enc"]
    th = t.get("activation_function.threshold")
    a = torch.relu(z) if th is None else z * (z > th)
    return a @ t["W_dec"] + t["b_dec"], a


# ---------------------------------------------------------------------------------------------
# data


def halueval_train_questions(data_dir: str | os.PathLike[str] | None = None, seed: int = 0):
    """HaluEval questions in the training side of the benchmark's grouped split of
    ``halueval_qa_tf`` (:func:`hallugraph.evaluate.split_groups`, given labels, ``seed``)."""
    from hallugraph.datasets import load_halueval_qa, load_halueval_qa_teacher_forced
    from hallugraph.evaluate import split_groups

    tf = load_halueval_qa_teacher_forced(data_dir)
    groups = np.array([ex.meta["group"] for ex in tf])
    labels = np.array([ex.meta["given_label"] for ex in tf])
    train, _, _ = split_groups(groups, seed=seed, labels=labels)
    keep = set(groups[train].tolist())
    return [ex for ex in load_halueval_qa(data_dir) if ex.id in keep]


def corpus_texts(
    lm: LoadedModel,
    sources: Sequence[str] = ("triviaqa", "halueval_qa"),
    data_dir: str | os.PathLike[str] | None = None,
    max_per_source: int | None = None,
) -> list[str]:
    """Training text: benchmark prompts (rendered as the benchmark does) + reference answer.

    See the module docstring for which records each source uses (never the benchmark's
    TriviaQA records, HaluEval only from its seed-0 training split).
    """
    from hallugraph.datasets import build_prompt, load_triviaqa

    texts: list[str] = []
    eos = lm.tokenizer.eos_token if lm.use_chat_template and lm.tokenizer.eos_token else ""
    for source in sources:
        if source == "triviaqa":
            exs = load_triviaqa(data_dir)[TRIVIAQA_START:]
        elif source == "halueval_qa":
            exs = halueval_train_questions(data_dir)
        else:
            raise ValueError(f"unknown training source {source!r}; use triviaqa, halueval_qa")
        if max_per_source is not None:
            exs = exs[:max_per_source]
        for ex in exs:
            prompt = render_prompt(lm, build_prompt(ex)[0])
            answer = ex.references[0] if ex.references else ""
            # the chat template ends with the assistant header; the plain template with "Answer:"
            sep = "" if lm.use_chat_template else " "
            texts.append(f"{prompt}{sep}{answer}{eos}")
    return texts


def _tokenize(lm: LoadedModel, texts: Sequence[str], max_len: int) -> list[list[int]]:
    add_special = not lm.use_chat_template
    enc = lm.tokenizer(list(texts), add_special_tokens=add_special, truncation=False)
    return [list(ids)[:max_len] for ids in enc["input_ids"]]


def _mlp_modules(model: Any) -> list[tuple[nn.Module, nn.Module]]:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError("transcoders need a Llama-style model (model.model.layers)")
    out = []
    for i, layer in enumerate(layers):
        norm = getattr(layer, "post_attention_layernorm", None)
        mlp = getattr(layer, "mlp", None)
        if norm is None or mlp is None:
            raise ValueError(
                f"layer {i} has no post_attention_layernorm/mlp: not a Llama-style layer "
                f"(circuit-tracer's mlp.hook_in/hook_out)"
            )
        out.append((norm, mlp))
    return out


@torch.no_grad()
def layer_activations(
    lm: LoadedModel, ids: Sequence[Sequence[int]]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """MLP inputs and outputs of every layer, ``[n_tokens, d]`` each (float32), over all
    non-padding positions except position 0 of every sequence."""
    model = lm.model
    device = next(model.parameters()).device
    pad = lm.tokenizer.pad_token_id or 0
    n = max(len(s) for s in ids)
    batch = torch.full((len(ids), n), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, s in enumerate(ids):  # right padding: default position ids stay correct
        batch[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    keep = mask.bool().clone()
    keep[:, 0] = False
    keep = keep.to(device)
    ins: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    handles = []
    for norm, mlp in _mlp_modules(model):
        handles.append(norm.register_forward_hook(lambda m, a, o: ins.append(o[keep].float())))
        handles.append(mlp.register_forward_hook(lambda m, a, o: outs.append(o[keep].float())))
    try:
        model(input_ids=batch.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ins, outs


# ---------------------------------------------------------------------------------------------
# state and files


def default_out_dir(model: str, cfg: TrainConfig) -> Path:
    """``~/.cache/hallugraph/transcoders/<model>/<activation>_w<width>_s<sparsity>``."""
    name = f"{cfg.activation}_w{cfg.width}_s{cfg.sparsity:g}"
    return cache_dir() / "transcoders" / model_slug(model) / name


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    _atomic_write_bytes(path, data)


def write_transcoder_set(
    out: str | os.PathLike[str],
    layers: Sequence[dict[str, torch.Tensor]],
    scan: str | None = None,
) -> Path:
    """Write ``layer_{i}.safetensors`` + ``config.yaml`` (circuit-tracer's transcoder_set)."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, tensors in enumerate(layers):
        _save_tensors(out / f"layer_{i}.safetensors", tensors, {})
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        "scan": scan or out.name,
    }
    _atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return out


def random_transcoder_set(
    out: str | os.PathLike[str],
    n_layers: int,
    d_model: int,
    width: int,
    *,
    seed: int = 0,
    enc_scale: float = 0.3,
    dec_scale: float = 0.1,
    jumprelu_layers: Sequence[int] = (),
    threshold: float = 0.05,
    scan: str | None = None,
) -> Path:
    """Untrained transcoders (Gaussian ``W_enc``/``W_dec``, zero biases) in circuit-tracer's
    format, for tests and smoke-testing cost: the graphs they give are real-sized but mean
    nothing. Layers in ``jumprelu_layers`` get a JumpReLU ``threshold``."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(n_layers):
        t = {
            "W_enc": torch.randn(width, d_model, generator=g) * enc_scale,
            "W_dec": torch.randn(width, d_model, generator=g) * dec_scale,
            "b_enc": torch.zeros(width),
            "b_dec": torch.zeros(d_model),
        }
        if i in set(jumprelu_layers):
            t["activation_function.threshold"] = torch.full((width,), float(threshold))
        layers.append(t)
    return write_transcoder_set(out, layers, scan=scan)


@dataclass
class _State:
    step: int = 0
    tokens: int = 0
    cursor: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _save_checkpoint(
    path: Path, cfg: TrainConfig, st: _State, tcs: Sequence[Transcoder], opts: Sequence[Any]
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for i, (tc, opt) in enumerate(zip(tcs, opts, strict=True)):
        for k, v in tc.state_dict().items():
            tensors[f"tc.{i}.{k}"] = v
        sd = opt.state_dict()
        for pid, pstate in sd["state"].items():
            for k, v in pstate.items():
                tensors[f"opt.{i}.{pid}.{k}"] = torch.as_tensor(v)
        groups.append(sd["param_groups"])
    meta = {
        "config": json.dumps(cfg.to_dict()),
        "state": json.dumps(asdict(st)),
        "param_groups": json.dumps(groups),
    }
    _save_tensors(path, tensors, meta)


def _load_checkpoint(
    path: Path, cfg: TrainConfig, tcs: Sequence[Transcoder], opts: Sequence[Any]
) -> _State:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    saved = TrainConfig.from_dict(json.loads(meta["config"]))
    if saved != cfg:
        diff = {
            k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items() if v != cfg.to_dict()[k]
        }
        raise ValueError(
            f"{path} was written with a different configuration (saved, now): {diff}; "
            f"use another --out or the same settings"
        )
    groups = json.loads(meta["param_groups"])
    for i, (tc, opt) in enumerate(zip(tcs, opts, strict=True)):
        tc.load_state_dict(
            {k[len(f"tc.{i}.") :]: v for k, v in tensors.items() if k.startswith(f"tc.{i}.")}
        )
        state: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"opt.{i}."
        for k, v in tensors.items():
            if k.startswith(prefix):
                pid, name = k[len(prefix) :].split(".", 1)
                state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": groups[i]})
    return _State(**json.loads(meta["state"]))


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    out: Path
    steps: int
    tokens: int
    seconds: float
    stopped: str
    """"tokens" (budget reached), "time" (time budget) or "done" (nothing left to do)."""
    report: list[dict[str, float]]
    history: list[dict[str, float]]


def _split(texts: Sequence[str], eval_texts: int, seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng(seed).permutation(len(texts))
    shuffled = [texts[i] for i in order]
    n_eval = min(eval_texts, max(len(texts) - 1, 0))
    return shuffled[: len(shuffled) - n_eval], shuffled[len(shuffled) - n_eval :]


def _batch_indices(cursor: int, n: int, size: int, seed: int) -> list[int]:
    """Indices of the next ``size`` training texts from ``cursor`` (a fresh permutation per
    epoch, determined by ``seed`` and the epoch)."""
    out = []
    for c in range(cursor, cursor + size):
        epoch, i = divmod(c, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[i]))
    return out


@torch.no_grad()
def evaluate_transcoders(
    lm: LoadedModel,
    layers: Sequence[Transcoder] | Sequence[dict[str, torch.Tensor]],
    texts: Sequence[str],
    max_len: int = 256,
    batch_texts: int = 16,
) -> list[dict[str, float]]:
    """Per layer ``{layer, fvu, l0, dead, tokens}`` on ``texts``.

    FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖² (ȳ: the mean target over these tokens); L0 = mean number of
    active features per token; ``dead`` = share of features never active on these tokens.
    ``layers`` are training modules or exported tensors (model units).
    """
    ids = _tokenize(lm, texts, max_len)
    n_layers = len(layers)
    sse = [0.0] * n_layers
    ss = [0.0] * n_layers
    sums: list[torch.Tensor | None] = [None] * n_layers
    active = [0.0] * n_layers
    ever: list[torch.Tensor | None] = [None] * n_layers
    count = 0
    for b in range(0, len(ids), batch_texts):
        ins, outs = layer_activations(lm, ids[b : b + batch_texts])
        count += ins[0].shape[0]
        for i, layer in enumerate(layers):
            x, y = ins[i].cpu(), outs[i].cpu()
            if isinstance(layer, Transcoder):
                rec, a, _ = layer(x / layer.in_scale)
                rec = rec * layer.out_scale
            else:
                rec, a = _exported_forward(layer, x)
            y64 = y.double()
            sse[i] += float(((rec.double() - y64) ** 2).sum())
            ss[i] += float((y64**2).sum())
            s = y64.sum(0)
            sums[i] = s if sums[i] is None else sums[i] + s
            on = a > 0
            active[i] += float(on.sum())
            e = on.any(0)
            ever[i] = e if ever[i] is None else ever[i] | e
    rows = []
    for i in range(n_layers):
        mean = sums[i] / max(count, 1)
        var = ss[i] - count * float((mean**2).sum())
        rows.append(
            {
                "layer": i,
                "fvu": sse[i] / var if var > 0 else float("nan"),
                "l0": active[i] / max(count, 1),
                "dead": float((~ever[i]).float().mean()) if ever[i] is not None else float("nan"),
                "tokens": count,
            }
        )
    return rows


def format_report(rows: Sequence[dict[str, float]]) -> str:
    """A plain-text table of :func:`evaluate_transcoders`' rows."""
    lines = [f"{'layer':>5}  {'FVU':>7}  {'L0':>8}  {'dead %':>6}", "-" * 32]
    for r in rows:
        lines.append(
            f"{int(r['layer']):>5}  {r['fvu']:>7.3f}  {r['l0']:>8.1f}  {100 * r['dead']:>6.1f}"
        )
    if rows:
        fvu = float(np.mean([r["fvu"] for r in rows]))
        l0 = float(np.mean([r["l0"] for r in rows]))
        lines.append("-" * 32)
        lines.append(f"{'mean':>5}  {fvu:>7.3f}  {l0:>8.1f}  (on {int(rows[0]['tokens'])} tokens)")
    return "\n".join(lines)


def train_transcoders(
    lm: LoadedModel,
    texts: Sequence[str],
    out: str | os.PathLike[str],
    cfg: TrainConfig | None = None,
    *,
    tokens: int,
    time_budget: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or continue training) one transcoder per layer of ``lm`` on ``texts``.

    Stops when ``tokens`` training tokens have been used in total or after ``time_budget``
    seconds of this call, checkpoints, exports the transcoder set, and evaluates it on the
    held-out texts (``report.json``). See the module docstring for the loss and the files.
    """
    from tqdm.auto import tqdm

    cfg = cfg or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = _split(texts, cfg.eval_texts, cfg.seed)
    if not train:
        raise ValueError("no training text")
    model_cfg = lm.model.config
    d_model, n_layers = int(model_cfg.hidden_size), int(model_cfg.num_hidden_layers)
    torch.manual_seed(cfg.seed)
    tcs = [
        Transcoder(d_model, cfg.width, cfg.activation, cfg.init_threshold) for _ in range(n_layers)
    ]
    opts = [torch.optim.Adam(tc.parameters(), lr=cfg.lr) for tc in tcs]
    ckpt = out / CHECKPOINT
    st = _load_checkpoint(ckpt, cfg, tcs, opts) if ckpt.exists() else _State()
    start = time.monotonic()
    stopped = "done"
    bar = tqdm(
        total=tokens,
        initial=min(st.tokens, tokens),
        unit="tok",
        unit_scale=True,
        desc="transcoders",
        disable=not progress,
        dynamic_ncols=True,
    )
    steps_since = 0
    try:
        while st.tokens < tokens:
            if time_budget is not None and time.monotonic() - start >= time_budget:
                stopped = "time"
                break
            t0 = time.monotonic()
            idx = _batch_indices(st.cursor, len(train), cfg.batch_texts, cfg.seed)
            ins, outs = layer_activations(lm, _tokenize(lm, [train[i] for i in idx], cfg.max_len))
            n_tok = int(ins[0].shape[0])
            rec_losses, sparsities = [], []
            for i, (tc, opt) in enumerate(zip(tcs, opts, strict=True)):
                x, y = ins[i].cpu(), outs[i].cpu()
                if st.step == 0:  # first batch of a fresh run: scales and decoder bias
                    with torch.no_grad():
                        tc.in_scale.fill_(float(x.pow(2).sum(-1).mean().div(d_model).sqrt()))
                        tc.out_scale.fill_(float(y.pow(2).sum(-1).mean().div(d_model).sqrt()))
                        tc.b_dec.copy_((y / tc.out_scale).mean(0))
                xn, yn = x / tc.in_scale, y / tc.out_scale
                rec, _, sparsity = tc(xn)
                rec_loss = (rec - yn).pow(2).sum(-1).mean() / d_model
                loss = rec_loss + cfg.sparsity * sparsity.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                rec_losses.append(float(rec_loss.detach()))
                sparsities.append(float(sparsity.mean().detach()))
            st.step += 1
            st.tokens += n_tok
            st.cursor += len(idx)
            st.seconds += time.monotonic() - t0
            st.history.append(
                {
                    "step": st.step,
                    "tokens": st.tokens,
                    "mse": float(np.mean(rec_losses)),
                    "sparsity": float(np.mean(sparsities)),
                }
            )
            bar.update(min(n_tok, max(tokens - bar.n, 0)))
            bar.set_postfix(mse=f"{np.mean(rec_losses):.3f}", refresh=False)
            steps_since += 1
            if steps_since >= cfg.checkpoint_every:
                _save_checkpoint(ckpt, cfg, st, tcs, opts)
                steps_since = 0
        else:
            stopped = "tokens" if st.step else "done"
    finally:
        bar.close()
        if steps_since:
            _save_checkpoint(ckpt, cfg, st, tcs, opts)
    exported = [tc.export() for tc in tcs]
    write_transcoder_set(out, exported, scan=f"hallugraph/{model_slug(lm.name)}/{out.name}")
    report = (
        evaluate_transcoders(lm, exported, held_out, cfg.max_len, cfg.batch_texts)
        if held_out
        else []
    )
    info = {
        "model": lm.name,
        "model_source": lm.source,
        "config": cfg.to_dict(),
        "train_texts": len(train),
        "eval_texts": len(held_out),
        "steps": st.step,
        "tokens": st.tokens,
        "train_seconds": st.seconds,
        "token_budget": tokens,
        "stopped": stopped,
    }
    _atomic_write_text(out / "training.json", json.dumps(info, indent=2) + "\n")
    _atomic_write_text(out / "report.json", json.dumps({"layers": report, **info}, indent=2) + "\n")
    if log is not None:
        log(format_report(report))
    return TrainResult(out, st.step, st.tokens, st.seconds, stopped, report, st.history)

"""The trainer's settings (:class:`TrainConfig`), its presets and its resumable state
(:class:`TrainState`): shared by :mod:`.train` and :mod:`.checkpoint`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["PRESETS", "TrainConfig", "TrainState"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run (a resumed run must use the same values)."""

    width: int = 4608
    k: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    decay_frac: float = 0.0
    """Over the last ``decay_frac`` of the run the lr falls linearly to 0.1 × ``lr``; the run's
    progress is its share of the token budget or of this call's time budget, whichever is
    larger (0: constant lr)."""
    batch_tokens: int = 2048
    window: int = 256
    prompt_share: float = 0.3
    skip_tokens: int = 100_000
    skip_pool: str = "all"
    """Text the skip is fitted on: ``"all"`` or ``"prompts"`` (only the formats attribution
    sees: on SmolLM2-135M a skip fitted on general text does not carry over to them)."""
    dead_tokens: int = 100_000
    k_aux: int = 256
    aux_coef: float = 1 / 32
    resample_every: int = 50
    """Every this many steps, dead features are re-initialized (0: never)."""
    resample_init: str = "calibrated"
    """How (:meth:`~.model.SkipTranscoder.resample_dead`): ``"calibrated"`` (live features'
    encoder norm, a bias that makes the feature fire, Adam's second moments of live rows) or
    ``"token"`` (the v2 preset's: fires on its own token only; dies again)."""
    export_l0: float = 0.0
    """If > 0, the exported JumpReLU thresholds are raised per layer so that the mean L0 on
    HaluEval-QA-format training text is at most this (:mod:`.calibrate`; 0: the trained
    BatchTopK threshold)."""
    enc_init: float = 0.1
    """Encoder rows start as ``enc_init`` × a token's centred input direction (data init)."""
    checkpoint_every: int = 100
    seed: int = 0
    sources: tuple[str, ...] = ("python_docs", "gcide")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if self.width < 1 or not 0 < self.k <= self.width:
            raise ValueError(f"need width >= 1 and 0 < k <= width, not {self.width}, {self.k}")
        if self.batch_tokens < self.window:
            raise ValueError("batch_tokens must be at least window")
        if self.checkpoint_every < 1 or self.skip_tokens < 1:
            raise ValueError("checkpoint_every and skip_tokens must be >= 1")
        if self.skip_pool not in ("prompts", "all"):
            raise ValueError(f"skip_pool must be 'prompts' or 'all', not {self.skip_pool!r}")
        if self.resample_init not in ("calibrated", "token"):
            raise ValueError(
                f"resample_init must be 'calibrated' or 'token', not {self.resample_init!r}"
            )
        if self.export_l0 < 0:
            raise ValueError(f"export_l0 must be >= 0, not {self.export_l0}")
        if not 0.0 <= self.decay_frac < 1.0:
            raise ValueError(f"decay_frac must be in [0, 1), not {self.decay_frac}")

    def lr_at(self, step: int, progress: float) -> float:
        """Learning rate of sparse step ``step`` at ``progress`` (0 → 1) through the run:
        linear warmup, constant, then the linear decay of the last ``decay_frac``."""
        lr = self.lr * min(1.0, (step + 1) / self.warmup_steps)
        if self.decay_frac > 0:
            f = (progress - (1.0 - self.decay_frac)) / self.decay_frac
            lr *= 1.0 - 0.9 * min(1.0, max(0.0, f))
        return lr

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Settings saved by this or an earlier version: a field added since takes the value
        that reproduces the earlier behaviour (:data:`_BEFORE`), not today's default."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        return cls(**{**_BEFORE, **d})


#: fields added after the v2 set, with the value that the runs before them had
_BEFORE: dict[str, Any] = {"resample_init": "token", "export_l0": 0.0}


#: the v2 set's settings (documented in BENCHMARKS.md: dead features 31 %, HaluEval-QA L0 69.6)
_V2 = TrainConfig(
    k=48,
    prompt_share=1.0,
    skip_pool="prompts",
    skip_tokens=30_000,
    decay_frac=0.25,
    resample_init="token",
)

#: ``--preset`` name -> (config, token budget, time budget in seconds)
PRESETS: dict[str, tuple[TrainConfig, int, float]] = {
    # v2 + the resampling that keeps revived features alive + thresholds calibrated at
    # export to L0 60 on HaluEval-QA-format training text (docs/TRANSCODERS.md)
    "smollm2-135m-2h-v3": (
        replace(_V2, resample_init="calibrated", export_l0=60.0),
        1_500_000,
        7200.0,
    ),
    "smollm2-135m-2h-v2": (_V2, 1_500_000, 7200.0),
    # the first set (git 685428f): skip on all text, 30 % prompts, k = 32, constant lr
    "smollm2-135m-2h": (TrainConfig(resample_init="token"), 2_000_000, 7200.0),
}


@dataclass
class TrainState:
    phase: str = "skip"
    batch: int = 0  # next batch index of the plan
    step: int = 0  # sparse-phase steps done
    skip_n: int = 0
    tokens: int = 0  # tokens of the sparse phase
    seconds: float = 0.0
    ridges: dict[str, float] = field(default_factory=dict)  # the skip's ridge per layer
    history: list[dict[str, float]] = field(default_factory=list)

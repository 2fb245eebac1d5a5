"""What an attribution run is made with: :class:`AttributionSettings`, the transcoders found for a
model, and the model + transcoders loaded for a run."""

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hallugraph.attribution.engine import AttributionEngine
from hallugraph.store import TraceStore

log = logging.getLogger(__name__)


TARGETS = ("first", "all")
ENGINES = ("hallugraph", "circuit-tracer")
DTYPES = ("float32", "bfloat16", "float16")
MATCHING = ("transcoders_digest", "max_feature_nodes", "targets", "max_answer_tokens", "dtype")


@dataclass(frozen=True)
class AttributionSettings:
    """How each trace's graphs are built."""

    max_feature_nodes: int | None = 64
    """Feature nodes per graph (``None``: every active feature; circuit-tracer's CLI uses
    7500). Gctx moves with it, so keep it fixed across the traces compared."""
    targets: str = "first"
    """``first`` (the first answer token) or ``all`` (every answer content token, averaged)."""
    max_answer_tokens: int | None = None
    """``targets="all"``: at most this many answer tokens (the first ones)."""
    batch_size: int = 64
    """Source nodes per backward pass (memory, not results)."""
    dtype: str = "float32"
    engine: str = "hallugraph"
    """``hallugraph`` (our engine) or ``circuit-tracer`` (its nnsight backend): same graphs."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, not {self.targets!r}")
        if self.max_feature_nodes is not None and self.max_feature_nodes < 1:
            raise ValueError("max_feature_nodes must be at least 1 (or None for all)")
        if self.max_answer_tokens is not None and self.max_answer_tokens < 1:
            raise ValueError("max_answer_tokens must be at least 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.targets == "first":  # meaningless there: normalized so settings compare equal
            object.__setattr__(self, "max_answer_tokens", None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# locating the model and the transcoders


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_dir_of(store: TraceStore, model: str | os.PathLike[str] | None = None) -> str:
    """The checkpoint to attribute with: ``model`` when given, else the run's model resolved as
    :func:`hallugraph.models.resolve_source` does (the converted SmolLM2 checkpoint in the
    cache for the default model)."""
    from hallugraph.models import resolve_source

    if model is not None:
        return str(Path(model).expanduser())
    name = store.info.get("model")
    if not name:
        raise ValueError(f"{store.dir}/run.json names no model: pass --model DIR")
    return resolve_source(str(name))


def find_transcoders(model: str) -> Path:
    """The only transcoder set under ``~/.cache/hallugraph/transcoders/<model>/`` (where
    ``hallugraph transcoders train`` writes by default); an error when there is none or
    several."""
    from hallugraph.config import cache_dir
    from hallugraph.models import model_slug

    root = cache_dir() / "transcoders" / model_slug(model)
    found = sorted(p for p in root.glob("*") if (p / "config.yaml").is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(
            f"no transcoder set found under {root}: train one with `hallugraph transcoders "
            "train`, or pass --transcoders DIR"
        )
    names = ", ".join(p.name for p in found)
    raise ValueError(f"several transcoder sets under {root} ({names}): pick one with --transcoders")


def resolve_transcoders(transcoders: str | os.PathLike[str] | None, model: str) -> Path:
    """``transcoders`` checked (a folder with ``config.yaml`` and ``layer_*.safetensors``), or
    :func:`find_transcoders` of the run's model."""
    if transcoders is None:
        return find_transcoders(model)
    tdir = Path(transcoders).expanduser().resolve()
    if not tdir.is_dir():
        raise ValueError(f"transcoder folder {tdir} does not exist")
    if not (tdir / "config.yaml").is_file() or not any(tdir.glob("layer_*.safetensors")):
        raise ValueError(
            f"{tdir} is not a transcoder set (config.yaml + layer_*.safetensors, as written by "
            "`hallugraph transcoders train`)"
        )
    return tdir


def transcoders_digest(tdir: str | os.PathLike[str]) -> str:
    """A cheap fingerprint of a transcoder set: ``config.yaml``, and each layer file's name,
    size and first and last MiB (weights differ there whenever training changed them)."""
    tdir = Path(tdir)
    h = hashlib.sha256((tdir / "config.yaml").read_bytes())
    for f in sorted(tdir.glob("layer_*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(2**20))
            if size > 2**21:
                fh.seek(size - 2**20)
                h.update(fh.read())
    return h.hexdigest()[:16]


def load_for_run(
    store: TraceStore,
    transcoders: Path,
    *,
    model: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: str = "float32",
    engine: str = "hallugraph",
) -> Any:
    """The run's model with ``transcoders``, ready to attribute: an
    :class:`~hallugraph.attribution.engine.AttributionEngine` (``engine="hallugraph"``) or a
    circuit-tracer ``ReplacementModel`` (``engine="circuit-tracer"``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "hallugraph":
        return AttributionEngine.from_pretrained(
            model_dir_of(store, model),
            transcoders,
            device=device or default_device(),
            dtype=getattr(torch, dtype),
        )
    from hallugraph.attribution.tracer import load_replacement_model

    return load_replacement_model(
        model_dir_of(store, model),
        transcoders,
        device=device or default_device(),
        dtype=getattr(torch, dtype),
    )


# ---------------------------------------------------------------------------------------------
# one trace

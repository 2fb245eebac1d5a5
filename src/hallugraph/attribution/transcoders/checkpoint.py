"""Checkpoints of a training run (two alternating slots under ``checkpoint/``, the slot in use
named last in ``checkpoint/state.json``) and the prototype pool of the data initialization."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hallugraph.attribution.transcoders.config import TrainConfig, TrainState
from hallugraph.io import atomic_write_json

if TYPE_CHECKING:
    from hallugraph.attribution.transcoders.model import SkipFit

__all__ = ["load_checkpoint", "sample_prototypes", "save_checkpoint"]


def save_checkpoint(
    folder: Path,
    cfg: TrainConfig,
    st: TrainState,
    tcs,
    opts,
    fits: list[SkipFit] | None,
    pool: list[list[torch.Tensor]] | None = None,
) -> None:
    """Write the next slot (weights, Adam's state, the skip's sums and prototypes while in the
    skip phase), then name it in ``state.json``: a crash mid-write leaves the last one valid."""
    from hallugraph.attribution.transcoders.io import save_tensors

    ck = folder / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    state_file = ck / "state.json"
    prev = json.loads(state_file.read_text())["slot"] if state_file.exists() else "b"
    slot = "a" if prev == "b" else "b"
    (ck / slot).mkdir(exist_ok=True)
    meta = {"step": str(st.step), "batch": str(st.batch)}
    n_layers = len(tcs)
    for i, tc in enumerate(tcs):
        t = {f"tc.{k}": v for k, v in tc.state_dict().items()}
        for pid, ps in opts[i].state_dict()["state"].items():
            for k, v in ps.items():
                t[f"opt.{pid}.{k}"] = torch.as_tensor(v)
        if fits is not None:
            t.update(fits[i].state("fit."))
            t.update(fits[n_layers + i].state("vfit."))
        if pool is not None and pool[0]:
            t["pool.x"], t["pool.y"] = pool[0][i], pool[1][i]
        save_tensors(ck / slot / f"layer_{i}.safetensors", t, meta)
    atomic_write_json(state_file, {"slot": slot, "config": cfg.to_dict(), "state": asdict(st)})


def load_checkpoint(
    folder: Path, cfg: TrainConfig, tcs, opts, fits: list[SkipFit], pool: list[list]
) -> TrainState:
    """Restore the slot named in ``state.json`` into ``tcs``, ``opts`` (and ``fits``, ``pool``
    in the skip phase); refuses a checkpoint written with other settings."""
    from safetensors import safe_open

    ck = folder / "checkpoint"
    saved = json.loads((ck / "state.json").read_text())
    if type(cfg).from_dict(saved["config"]) != cfg:
        old = saved["config"]
        diff = {k: (old.get(k), v) for k, v in cfg.to_dict().items() if old.get(k) != v}
        raise ValueError(
            f"{ck} was written with other settings (saved, now): {diff}; use another --out "
            f"or the same settings"
        )

    st = TrainState(**saved["state"])
    for i, tc in enumerate(tcs):
        path = ck / saved["slot"] / f"layer_{i}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            if f.metadata().get("step") != str(st.step):
                raise ValueError(f"{path} does not belong to checkpoint step {st.step}")
            t = {k: f.get_tensor(k) for k in f.keys()}
        tc.load_state_dict({k[3:]: v for k, v in t.items() if k.startswith("tc.")})
        tc.invalidate()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in t.items():
            if k.startswith("opt."):
                pid, name = k[4:].split(".", 1)
                state.setdefault(int(pid), {})[name] = v
        if state:
            sd = opts[i].state_dict()
            opts[i].load_state_dict({"state": state, "param_groups": sd["param_groups"]})
        if st.phase == "skip":
            fits[i].load(t, "fit.")
            fits[len(tcs) + i].load(t, "vfit.")
            if "pool.x" in t:
                pool[0].append(t["pool.x"])
                pool[1].append(t["pool.y"])
    return st


def sample_prototypes(pool, ins, outs, cfg: TrainConfig, batch: int) -> None:
    """Add a few random tokens of this skip-phase batch (the same for every layer) to the
    prototype pool, up to ``width`` tokens spread over the whole skip phase."""
    have = int(pool[0][0].shape[0]) if pool[0] else 0
    per_batch = math.ceil(1.25 * cfg.width * cfg.batch_tokens / cfg.skip_tokens)
    take = min(per_batch, cfg.width - have, int(ins[0].shape[0]))
    if take <= 0:
        return
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + batch)
    sel = torch.randperm(int(ins[0].shape[0]), generator=g)[:take]
    for i in range(len(ins)):
        for j, src in enumerate((ins, outs)):
            part = src[i][sel]
            if have:
                pool[j][i] = torch.cat([pool[j][i], part])
            elif i == len(pool[j]):
                pool[j].append(part)

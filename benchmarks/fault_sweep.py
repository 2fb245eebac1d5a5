"""Inject faults into copies of a labeled run and record what each command does with them.

    python benchmarks/fault_sweep.py runs/r12 [--work runs/faults] [--detectors perplexity,...]

For each fault (bytes flipped in a shard, the shared prefix or a statistics cache; a shard
truncated or deleted; run.json truncated or deleted; a manifest number edited), a fresh copy
of the run is damaged, then ``hallugraph stats``, ``evaluate``, ``verify``, ``info`` and a
resumed ``extract`` (the run's own command line, rebuilt from run.json) are run on it. Prints
a markdown table: exit code and the first line of the error of each command. The run itself
is never modified. Statistics are computed on each copy first, so that the cache faults have
files to damage (and the shard faults show that `stats` then answers from the cache).
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def flip(path: Path, n: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    mid = start + (len(raw) - start - n) // 2
    for i in range(mid, mid + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_manifest(run: Path) -> None:
    lines = (run / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["token_logprobs"][0] += 0.5
    lines[0] = json.dumps(row)
    (run / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def first(run: Path, pattern: str) -> Path:
    return sorted(run.glob(pattern))[0]


FAULTS: dict[str, Callable[[Path], None]] = {
    "none (control)": lambda r: None,
    "64 bytes flipped in a shard": lambda r: flip(first(r, "shards/*.safetensors")),
    "shard truncated to half": lambda r: truncate(first(r, "shards/*.safetensors")),
    "shard deleted": lambda r: first(r, "shards/*.safetensors").unlink(),
    "16 bytes flipped in shared.safetensors": lambda r: flip(r / "shared.safetensors", 16),
    "8 bytes flipped in a statistics cache": lambda r: flip(first(r, "stats/lapeig/*"), 8),
    "statistics cache truncated": lambda r: truncate(first(r, "stats/lapeig/*"), 0.3),
    "a log-prob edited in the manifest": edit_manifest,
    "run.json truncated": lambda r: truncate(r / "run.json"),
    "run.json deleted": lambda r: (r / "run.json").unlink(),
}


def hallugraph(*args: str) -> tuple[int, str]:
    """Exit code and the line that matters: the error, verify's first problem, a redone shard."""
    p = subprocess.run(
        [sys.executable, "-m", "hallugraph", *args], capture_output=True, text=True, check=False
    )
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("hallugraph: error")]
    out = [ln for ln in p.stdout.splitlines() if "problem:" in ln or "redone" in ln]
    msg = (err or out or [""])[0].replace("hallugraph: error: ", "").replace("problem: ", "")
    return p.returncode, msg.strip()


def extract_args(info: dict, run: Path) -> list[str]:
    gen = info["generation"]
    args = ["extract", "--dataset", info["dataset_source"], "--out", str(run), "--no-progress"]
    args += ["--model", info["model"], "--max-new-tokens", str(gen["max_new_tokens"])]
    args += ["--batch-size", str(gen["batch_size"]), "--shard-size", str(info["shard_size"])]
    if info.get("num_samples"):
        args += ["--num-samples", str(info["num_samples"])]
    return args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--work", default="runs/faults")
    ap.add_argument("--detectors", default="perplexity,llmcheck_attn,llmcheck_hidden")
    ap.add_argument("--no-extract", action="store_true", help="skip the resumed extract")
    a = ap.parse_args()
    src, work = Path(a.run), Path(a.work)
    info = json.loads((src / "run.json").read_text())
    base = work / "base"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, base)
    subprocess.run(
        [sys.executable, "-m", "hallugraph", "stats", str(base), "--no-progress"],
        check=True,
        capture_output=True,
    )
    cmds = ["stats", "evaluate", "verify", "info"] + ([] if a.no_extract else ["extract"])
    print("| fault | " + " | ".join(f"`{c}`" for c in cmds) + " |")
    print("|---|" + "---|" * len(cmds))
    for k, (name, inject) in enumerate(FAULTS.items()):
        cells = []
        for cmd in cmds:
            run = work / f"f{k}_{cmd}"
            shutil.copytree(base, run)
            inject(run)
            if cmd == "stats":
                rc, msg = hallugraph("stats", str(run), "--no-progress")
            elif cmd == "evaluate":
                rc, msg = hallugraph(
                    "evaluate", str(run), "--detectors", a.detectors, "--bootstrap", "0",
                    "--no-progress", "--out", str(run / "eval"),
                )  # fmt: skip
            elif cmd == "extract":
                rc, msg = hallugraph(*extract_args(info, run))
                if rc == 0:
                    v, _ = hallugraph("verify", str(run))
                    msg = "resumed, damaged shard redone" if "redone" in msg else "resumed"
                    msg += f"; verify after: exit {v}"
            else:
                rc, msg = hallugraph(cmd, str(run))
            msg = msg.replace(str(run), "RUN").replace("|", "\\|")
            cells.append(f"**{rc}** {msg[:150]}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

"""docs/benchmark/transcoders.json and the markdown table of docs/BENCHMARKS.md from a trained
set's manifest (``hallugraph transcoders train`` writes it, ``transcoders eval`` measures the
same table).

    SET=~/.cache/hallugraph/transcoders/smollm2_135M/smollm2-135m-2h
    python benchmarks/transcoders_report.py $SET --json docs/benchmark/transcoders.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hallugraph.io import atomic_write_json

SETS = ("halueval_qa", "triviaqa")
#: the issue's targets (mean over layers; fvu_max: no layer above; dead: mean share)
TARGETS = {"fvu_mean": 0.20, "fvu_max": 0.40, "l0_mean": 64, "dead_frac_mean": 0.10}


def _met(summary: dict[str, float]) -> dict[str, bool]:
    return {k: bool(summary[k] <= v) for k, v in TARGETS.items()}


def _attribution(specs: list[str]) -> dict:
    """Mean Gctx / RS / CS per run over the traces every run scored, and their settings."""
    runs = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        f = Path(path).expanduser() / "attribution" / "groundedness.json"
        if not f.is_file():
            raise SystemExit(f"{f} is missing: run `hallugraph groundedness {path}` first")
        runs[name] = json.loads(f.read_text())
    common = sorted(set.intersection(*(set(r["scores"]) for r in runs.values())))
    if not common:
        raise SystemExit("the runs have no scored trace in common")
    out: dict = {"traces": common, "sets": {}}
    print(f"\nattribution, {len(common)} answers scored by every set:")
    print("| set | transcoders | Gctx | RS | CS | s / answer |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in runs.items():
        sc = [r["scores"][t] for t in common]
        row = {k: float(np.mean([x[k] for x in sc])) for k in ("gctx", "rs", "cs", "seconds")}
        row["settings"] = r.get("settings")
        out["sets"][name] = row
        tc = str((r.get("settings") or {}).get("transcoders", ""))
        print(
            f"| {name} | {Path(tc).name or '?'} | {row['gctx']:.3f} | {row['rs']:.3f} "
            f"| {row['cs']:.3f} | {row['seconds']:.1f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set", help="transcoder set folder (with manifest.json)")
    ap.add_argument("--json", default=None, help="write the benchmark JSON here")
    ap.add_argument(
        "--attribution",
        nargs="*",
        default=[],
        metavar="NAME=RUN",
        help="runs scored by `hallugraph groundedness` (one per transcoder set): mean Gctx, RS, "
        "CS over the answers all of them scored",
    )
    args = ap.parse_args()
    m = json.loads((Path(args.set).expanduser() / "manifest.json").read_text())
    if "eval" not in m:
        raise SystemExit(f"{args.set}: manifest.json has no evaluation (train without --no-eval)")
    tables, summary = m["eval"]["tables"], m["eval"]["summary"]
    layers = []
    for i in range(len(tables["all"])):
        row = {"layer": i}
        for name in (*SETS, "all"):
            r = tables[name][i]
            row[name] = {k: r[k] for k in ("fvu", "fvu_skip", "l0", "dead_frac")}
        layers.append(row)
    out = {
        "model": m["model"],
        "preset": m.get("preset"),
        "set": str(Path(args.set).expanduser()),
        "tokens": m["tokens"],
        "skip_tokens": m["skip_tokens"],
        "seconds": m["seconds"],
        "tokens_per_s": m["tokens_per_s"],
        "stopped": m["stopped"],
        "cpu": m["cpu"],
        "torch_threads": m["torch_threads"],
        "git_commit": m["git_commit"],
        "config": m["config"],
        "eval_tokens": {name: tables[name][0]["tokens"] for name in (*SETS, "all")},
        "summary": summary,
        "layers": layers,
        "targets": TARGETS,
        "targets_met": {name: _met(summary[name]) for name in (*SETS, "all")},
    }
    if args.attribution:
        out["attribution"] = _attribution(args.attribution)
    if args.json:
        atomic_write_json(args.json, out)
    head = "| layer | " + " | ".join(f"{s} FVU | skip FVU | L0 | dead %" for s in SETS) + " |"
    print(head)
    print("|" + "---|" * (1 + 4 * len(SETS)))
    for row in layers:
        cells = []
        for s in SETS:
            r = row[s]
            cells += [
                f"{r['fvu']:.3f}",
                f"{r['fvu_skip']:.3f}",
                f"{r['l0']:.1f}",
                f"{100 * r['dead_frac']:.1f}",
            ]
        print(f"| {row['layer']} | " + " | ".join(cells) + " |")
    cells = []
    for s in SETS:
        su = summary[s]
        cells += [
            f"**{su['fvu_mean']:.3f}** (max {su['fvu_max']:.3f})",
            f"{su['fvu_skip_mean']:.3f}",
            f"**{su['l0_mean']:.1f}**",
            f"**{100 * su['dead_frac_mean']:.1f}** (max {100 * su['dead_frac_max']:.1f})",
        ]
    print("| mean | " + " | ".join(cells) + " |")
    print(
        f"\ntokens {m['tokens']:,} (+ {m['skip_tokens']:,} for the skip), "
        f"{m['seconds']:.0f} s, {m['tokens_per_s']} tokens/s, stopped: {m['stopped']}"
    )
    for name in (*SETS, "all"):
        met = out["targets_met"][name]
        print(f"{name}: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))


if __name__ == "__main__":
    main()

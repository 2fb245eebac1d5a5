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

from hallugraph.io import atomic_write_json

SETS = ("halueval_qa", "triviaqa")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set", help="transcoder set folder (with manifest.json)")
    ap.add_argument("--json", default=None, help="write the benchmark JSON here")
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
        "targets": {"fvu_mean": 0.20, "fvu_max": 0.40, "l0_mean": 64, "dead_frac": 0.10},
    }
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


if __name__ == "__main__":
    main()

"""What the new evaluation protocol changed in the benchmark table, and by how much (issue 18).

Reads two ``results.json`` of ``hallugraph evaluate`` (the old one-split table and the new
cross-validated one) and prints Markdown: the answers tested per run, the AUROC CI widths, every
detector's AUROC old -> new, the HaluEval transfer cells that leaked, LapEigvals' length-matched
AUROC, the leave-one-dataset-out column and the fusion against the best single detector.
Nothing is computed here that the two files do not hold; the numbers in docs/BENCHMARKS.md's
"What changed" come from this script.

    .venv/bin/python benchmarks/table_changes.py                      # old = ca78426's table
    .venv/bin/python benchmarks/table_changes.py --old OLD.json --new NEW.json --out changes.md

``--old`` / ``--new`` take a path or ``REV:PATH`` (read with ``git show``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from hallugraph.evaluation.tables import fmt_ci

OLD = "ca78426:docs/benchmark/results.json"  # the last table of the one-split protocol
NEW = "docs/benchmark/results.json"
FIXED = ("lapeigvals", "hallushift", "saplma_mlp")  # detectors whose code a fix changed


def load(spec: str) -> dict[str, Any]:
    """A results.json from a path, or from ``REV:PATH`` in this repository's history."""
    if not Path(spec).exists() and ":" in spec:
        text = subprocess.run(
            ["git", "show", spec], check=True, capture_output=True, text=True
        ).stdout
    else:
        text = Path(spec).read_text()
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise SystemExit(f"{spec}: not a results.json of hallugraph evaluate (no 'results' list)")
    return data


def rows(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["dataset"], r["detector"]): r for r in data["results"] if r.get("auroc") is not None}


def fmt(r: dict[str, Any] | None, key: str = "auroc") -> str:
    """``value [lo, hi]`` as in results.md (``-``: no such row)."""
    return "-" if r is None else fmt_ci(r, key)


def width(r: dict[str, Any]) -> float:
    return float(r["auroc_hi"] - r["auroc_lo"])


def tested(r: dict[str, Any], old: bool) -> tuple[int, int]:
    """(answers tested, of them not hallucinated) of one row."""
    n = int(r["n_test"] if old else r["n"])
    pct = float(r["pct_halluc_test"] if old else r["pct_halluc"])
    return n, round(n * (100 - pct) / 100)


def report(old: dict[str, Any], new: dict[str, Any]) -> str:
    o, n = rows(old), rows(new)
    runs = [d for d in new["config"]["datasets"] if any(k[0] == d for k in n)]
    out = [
        "## Answers tested per run (old: the 20 % test split; new: every answer, out of fold)",
        "",
    ]
    out += [
        "| run | old tested (not hallucinated) | new tested (not hallucinated) |",
        "|---|---:|---:|",
    ]
    for d in runs:
        ro = next((r for k, r in o.items() if k[0] == d), None)
        rn = next(r for k, r in n.items() if k[0] == d)
        a = "{} ({})".format(*tested(ro, True)) if ro else "-"
        out.append(f"| {d} | {a} | {'{} ({})'.format(*tested(rn, False))} |")
    out += ["", "## AUROC CI width, median over the detectors in both tables", ""]
    out += ["| run | old | new | new / old |", "|---|---:|---:|---:|"]
    for d in runs:
        both = [k for k in n if k[0] == d and k in o]
        if not both:
            continue
        wo = statistics.median(width(o[k]) for k in both)
        wn = statistics.median(width(n[k]) for k in both)
        out.append(f"| {d} | {wo:.3f} | {wn:.3f} | {wn / wo:.2f} |")
    out += ["", "## AUROC per detector, old -> new", ""]
    out += ["| run | detector | old | new | new - old |", "|---|---|---|---|---:|"]
    for d in runs:
        for k in sorted((k for k in n if k[0] == d), key=lambda k: -n[k]["auroc"]):
            delta = f"{n[k]['auroc'] - o[k]['auroc']:+.3f}" if k in o else "-"
            mark = " (fixed)" if k[1] in FIXED else ""
            out.append(f"| {d} | {k[1]}{mark} | {fmt(o.get(k))} | {fmt(n[k])} | {delta} |")
    out += ["", "## LapEigvals: raw and length-matched AUROC", ""]
    out += [
        "| run | old raw | old len-matched | new raw | new len-matched |",
        "|---|---|---|---|---|",
    ]
    for d in runs:
        a, b = o.get((d, "lapeigvals")), n.get((d, "lapeigvals"))
        if b is not None:
            out.append(
                f"| {d} | {fmt(a)} | {fmt(a, 'auroc_lm')} | {fmt(b)} | {fmt(b, 'auroc_lm')} |"
            )
    out += transfer_section(old, new)
    out += lodo_section(new, runs)
    out += ["", "## fusion against the run's best single detector (paired question bootstrap)", ""]
    out += ["| run | best single | fusion - best [95% CI] | p |", "|---|---|---|---:|"]
    for d in runs:
        f = (new.get("by_run", {}).get(d) or {}).get("fusion_vs_best")
        if f:
            ci = f"{f['diff']:+.3f} [{f['diff_lo']:+.3f}, {f['diff_hi']:+.3f}]"
            pv = f"< {1 / f['n_boot']:.3f}" if f["p"] == 0 else f"{f['p']:.3f}"
            out.append(f"| {d} | {f['best_single']} | {ci} | {pv} |")
        else:
            out.append(f"| {d} | - | fusion missing | - |")
    return "\n".join(out) + "\n"


def transfer_section(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    pair = {("halueval_qa", "halueval_qa_tf"), ("halueval_qa_tf", "halueval_qa")}
    out = ["", "## Transfer between the two HaluEval runs (the same 500 questions)", ""]
    out += [
        "| train -> test | old: cells, median AUROC, answers tested | new: cells with a score, "
        "answers tested, shared questions left out |",
        "|---|---|---|",
    ]
    for a, b in sorted(pair):
        co = [
            t for t in old.get("transfer", []) if (t["train_dataset"], t["test_dataset"]) == (a, b)
        ]
        cn = [
            t for t in new.get("transfer", []) if (t["train_dataset"], t["test_dataset"]) == (a, b)
        ]
        so = [t["auroc"] for t in co if t.get("auroc") is not None]
        so_txt = f"{len(so)}, {statistics.median(so):.3f}, {co[0]['n_test']}" if so else "-"
        sn = [t for t in cn if t.get("auroc") is not None]
        tested_n = max((int(t.get("n_test") or 0) for t in cn), default=0)
        left = max((int(t.get("n_shared_left_out") or 0) for t in cn), default=0)
        out.append(f"| {a} -> {b} | {so_txt} | {len(sn)} of {len(cn)}, {tested_n}, {left} |")
    return out


def lodo_section(new: dict[str, Any], runs: list[str]) -> list[str]:
    out = ["", "## Leave-one-dataset-out: the three best detectors per left-out run", ""]
    out += ["| left out | 1st | 2nd | 3rd | same detectors in-domain |", "|---|---|---|---|---|"]
    n = rows(new)
    for d in runs:
        cand = [r for (dd, _), r in n.items() if dd == d and r.get("lodo_auroc") is not None]
        top = sorted(cand, key=lambda r: -r["lodo_auroc"])[:3]
        cells = [f"{r['detector']} {fmt(r, 'lodo_auroc')}" for r in top]
        cells += ["-"] * (3 - len(cells))
        ind = ", ".join(f"{r['detector']} {r['auroc']:.3f}" for r in top)
        out.append(f"| {d} | {' | '.join(cells)} | {ind} |")
    return out


def summary(new: dict[str, Any]) -> str:
    """The new table in short: AUROC [CI] per detector and run (**bold**: the run's best single
    detector; ~ : not significantly different from it, paired p >= 0.05; ↑: significantly
    above it, p < 0.05), then the leave-one-dataset-out AUROC and the length-matched AUROC in
    the same layout."""
    n = rows(new)
    runs = [d for d in new["config"]["datasets"] if any(k[0] == d for k in n)]
    order = [d for d in new["config"]["detectors"] if any(k[1] == d for k in n)]
    family = {k[1]: r.get("family", "") for k, r in n.items()}
    head = ["| detector | family | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    out = ["| run | answers | questions | % hallucinated |", "|---|---:|---:|---:|"]
    for d in runs:
        info = new["runs"][d]
        out.append(f"| {d} | {info['n']} | {info['n_questions']} | {info['pct_halluc']:.1f} |")
    for title, key in (
        ("AUROC [95 % CI], pooled out-of-fold", "auroc"),
        ("leave-one-dataset-out AUROC [95 % CI] (fitted on the other runs)", "lodo_auroc"),
        ("length-matched AUROC [95 % CI] (answer pairs within 2 tokens)", "auroc_lm"),
    ):
        out += ["", f"{title}:", ""] + head
        for det in order:
            cells = []
            for d in runs:
                r = n.get((d, det))
                txt = fmt(r, key)
                if r is not None and key == "auroc":
                    p = r.get("vs_best_p")
                    if r.get("vs_best_diff") == 0 or p is None:
                        txt = f"**{txt}**"
                    elif p >= 0.05:
                        txt = f"~ {txt}"
                    elif r["vs_best_diff"] > 0:  # the fusion, above the best single detector
                        txt = f"↑ **{txt}**"
                cells.append(txt)
            out.append(f"| `{det}` | {family[det]} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default=OLD, help=f"old results.json (default {OLD})")
    ap.add_argument("--new", default=NEW, help=f"new results.json (default {NEW})")
    ap.add_argument("--out", help="write the Markdown here too")
    ap.add_argument("--summary", action="store_true", help="the new table in short instead")
    args = ap.parse_args(argv)
    text = summary(load(args.new)) if args.summary else report(load(args.old), load(args.new))
    sys.stdout.write(text)
    if args.out:
        from hallugraph.io import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

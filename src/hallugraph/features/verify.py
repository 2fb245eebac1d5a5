"""``hallugraph verify``: check a whole run (its files, tensors and statistics caches) against their
checksums."""

from __future__ import annotations

import os
from pathlib import Path

from hallugraph.store.integrity import StoreError


class VerifyReport:
    """What :func:`verify_run` found: ``problems`` (damage: the run must not be trusted),
    ``notes`` (worth knowing, not damage) and how many tensors/files were checked."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.tensors = 0
        self.files = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        head = (
            f"{self.run_dir}: OK ({self.files} files, {self.tensors} tensors checked)"
            if self.ok
            else f"{self.run_dir}: DAMAGED ({len(self.problems)} problem(s))"
        )
        lines = [head]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify_run(run_dir: str | os.PathLike[str]) -> VerifyReport:
    """Check a whole run: ``run.json`` and the manifest parse (rows against their
    ``row_checksum``), ``shared.safetensors`` and every tensor of every shard against their
    checksums, shards that should exist do, every statistics cache file is readable and
    matches its checksum, and a pruned shard has the cache files the run's statistics need."""
    from hallugraph.features import STATS_DIR, check_cache_file
    from hallugraph.store import SHARD_DIR, TraceStore

    rep = VerifyReport(Path(run_dir))
    try:
        store = TraceStore(run_dir, verify=False)
    except StoreError as err:
        rep.problems.append(str(err))
        return rep
    rep.files += 2
    if not store.has_checksums:
        rep.notes.append(
            "no checksums recorded (made by an older version of hallugraph): files were checked "
            "for presence and readability only, their contents cannot be verified"
        )
    if int(store.info.get("prefix_len", 0)):
        try:
            store.check_shared()
            rep.files += 1
        except StoreError as err:
            rep.problems.append(str(err))
    by_shard: dict[str, int] = {}
    for r in store.rows:
        by_shard[r["shard"]] = by_shard.get(r["shard"], 0) + 1
        if store.has_checksums and ("checksums" not in r or "row_checksum" not in r):
            rep.problems.append(
                f"{store.dir / 'manifest.jsonl'}: trace {r['question_id']} has no checksums "
                "in a run that records them (the manifest was edited)"
            )
    stat_dirs = sorted(p for p in (store.dir / STATS_DIR).glob("*") if p.is_dir())
    for shard in by_shard:
        path = store.shard_path(shard)
        if path.exists() or store.tensors_expected():
            try:
                rep.tensors += store.check_shard(shard)
                rep.files += 1
            except StoreError as err:
                rep.problems.append(str(err))
            continue
        for d in stat_dirs:  # a pruned shard: its statistics are all that is left
            if not (d / shard).exists():
                rep.problems.append(
                    f"{d / shard}: missing, and the raw tensors of {shard} were not kept "
                    f"(statistic {d.name} cannot be recomputed for its traces)"
                )
    for d in stat_dirs:
        for f in sorted(d.iterdir()):
            if not f.is_file() or f.name not in by_shard:
                continue
            problem = check_cache_file(f, by_shard[f.name])
            rep.files += 1
            if problem:
                rep.problems.append(problem)
    leftovers = [
        p
        for folder in [store.dir, store.dir / SHARD_DIR, *stat_dirs]
        if folder.is_dir()
        for p in folder.glob("*.tmp")
    ]
    if leftovers:
        rep.notes.append(
            f"{len(leftovers)} temporary file(s) left by an interrupted writer (e.g. "
            f"{leftovers[0]}); a resumed `hallugraph extract` removes them"
        )
    damaged = sorted(store.dir.glob(f"{SHARD_DIR}/*.damaged"))
    if damaged:
        rep.notes.append(
            f"{len(damaged)} damaged shard(s) set aside by a resumed extract (e.g. {damaged[0]}); "
            "their traces were extracted again, the files can be deleted"
        )
    return rep

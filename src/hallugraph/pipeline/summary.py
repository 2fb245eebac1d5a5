"""What an extraction reports (:class:`ExtractSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExtractSummary:
    run_dir: Path
    processed: int
    """Traces written by this invocation."""
    total: int
    """Traces in the run directory after this invocation."""
    errors: int
    shards_written: list[str]
    sizes: dict[str, int]
    first_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)
    """What went wrong for each failed example (``errors.jsonl`` has them too)."""
    redone: dict[str, str] = field(default_factory=dict)
    """Damaged shards found on resume (shard -> problem), whose traces were extracted again."""
    units: tuple[int, int] = (0, 0)
    """Units done (this invocation's part, or the whole run) and planned."""
    note: str = ""

    def render(self) -> str:
        mb = 1024 * 1024
        lines = [
            f"Run directory:        {self.run_dir}",
            f"Examples processed:   {self.processed} (run total {self.total})",
            f"Errors:               {self.errors}",
        ]
        shown = self.error_messages[:10]
        lines += [f"  {m}" for m in shown]
        if len(self.error_messages) > len(shown):
            lines.append(f"  ... {len(self.error_messages) - len(shown)} more in errors.jsonl")
        for shard, problem in self.redone.items():
            lines.append(f"Damaged shard redone: {shard} ({problem})")
        lines.append(f"Units done:           {self.units[0]} of {self.units[1]}")
        lines.append(f"Shards written:       {len(self.shards_written)}")
        for name, size in self.sizes.items():
            if name != "total":
                lines.append(f"  {name:<48} {size / mb:9.2f} MB")
        lines.append(f"Total size on disk:   {self.sizes.get('total', 0) / mb:.2f} MB")
        if self.total:
            lines.append(
                f"Per trace:            {self.sizes.get('total', 0) / mb / self.total:.3f} MB"
            )
        for key, shape in self.first_shapes.items():
            lines.append(f"First trace {key:<14} {shape}")
        lines.append(f"Wall time:            {self.seconds:.1f} s")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

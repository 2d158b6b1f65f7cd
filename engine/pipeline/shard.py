"""``--shard i/n``: a deterministic share of an archive's slides, for the n jobs of an array job.

Shard i takes the stores at positions i, i+n, i+2n, ... of the sorted store list, so every store
belongs to exactly one shard and the shards differ by at most one slide. Shards write their slides
into one OUT; ``bmengine report OUT`` then merges them (engine/outputs/rebuild.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based, as Slurm's SLURM_ARRAY_TASK_ID and PBS's PBS_ARRAY_INDEX count with --array=0-(n-1)
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard {self.index}/{self.count}: expected i/n with n >= 1 and 0 <= i < n")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        parts = text.split("/")
        try:
            index, count = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected i/n, two whole numbers such as 0/4") from None
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def select(self, stores: list[Path]) -> list[Path]:
        return sorted(stores, key=lambda p: p.name)[self.index :: self.count]

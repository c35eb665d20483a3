"""A running study's progress: each unit's rows saved as they come back, the progress bar, and each
replica's and stage's throughput for the report."""
from __future__ import annotations

import sys
import time
from collections import defaultdict

from tqdm import tqdm

from tts_engine.replica import Unit
from tts_engine.study.store import Store


def samples(unit: Unit) -> int:
    """Solutions a unit samples per problem: about the same tokens each, whatever the method."""
    return unit.samples if unit.kind == "difficulty" else 1 if unit.method == "cot" else unit.cfg.n


class Progress:
    """Writes each unit's rows as they come back, and keeps the progress bar (the unit running now;
    time left from the samples left, difficulty estimation included) and each replica's and stage's
    throughput."""

    def __init__(self, units: list[Unit], results: Store, difficulty: Store, key: str):
        self.results, self.difficulty, self.key = results, difficulty, key
        self.bar = tqdm(total=sum(len(u.problems) * samples(u) for u in units), desc="study", unit="sample",
                        smoothing=0, file=sys.stderr)      # smoothing 0: the rate over the whole run
        self.replicas: dict[int, dict] = {}
        self.stages: dict[str, float] = defaultdict(float)
        self.started: dict[str, float] = {}
        self.start = time.perf_counter()

    def starting(self, unit: Unit) -> None:
        self.started[unit.key] = time.perf_counter()
        self.bar.set_description_str(unit.label)

    def __call__(self, unit: Unit, rows: list[dict], replica: int) -> None:
        stats = self.replicas.setdefault(replica, dict(replica=replica, units=0, problems=0, tokens=0))
        rows = [{**r, "settings": self.key, "unit": unit.key, "unit_size": len(rows)} for r in rows]
        (self.difficulty if unit.kind == "difficulty" else self.results).add_unit(rows)
        stats["tokens"] += sum(r["tokens"]["policy"] + r["tokens"]["prm"] for r in rows)
        stats["units"] += 1
        stats["problems"] += len(unit.problems)
        stage = "difficulty" if unit.kind == "difficulty" else unit.method
        self.stages[stage] += time.perf_counter() - self.started.pop(unit.key, self.start)
        self.bar.update(len(unit.problems) * samples(unit))
        total = sum(r["tokens"] for r in self.replicas.values())
        self.bar.set_postfix_str(f"{total / max(time.perf_counter() - self.start, 1e-9):.0f} tok/s")

    def throughput(self) -> dict:
        seconds = time.perf_counter() - self.start
        rows = [{**r, "tokens_per_s": r["tokens"] / seconds} for _, r in sorted(self.replicas.items())]
        return {"replicas": rows, "seconds": seconds, "stage_seconds": dict(self.stages),
                "tokens_per_s": sum(r["tokens"] for r in rows) / max(seconds, 1e-9)}


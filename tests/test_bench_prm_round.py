"""benchmarks/bench_prm_round.py runs on the real PRM at a small size and reports every phase at
each depth asked (the numbers themselves live in benchmarks/RESULTS.md, not in assertions)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_prm_round_reports_each_depth():
    res = subprocess.run([sys.executable, "benchmarks/bench_prm_round.py", "--trajectories", "4", "--depths",
                          "2", "5", "--step-chars", "20", "--repeats", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split() for line in res.stdout.splitlines()[1:]]
    assert [r[:2] for r in rows] == [["2", "4"], ["5", "4"]]
    for r in rows:
        phases = [float(x) for x in r[2:]]
        assert len(phases) == 5 and all(p >= 0 for p in phases) and phases[-1] >= max(phases[:-1]) > 0

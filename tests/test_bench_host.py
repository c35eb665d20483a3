"""benchmarks/bench_host.py runs on the real engine at a small size and reports every phase for
both loops (the numbers themselves live in benchmarks/RESULTS.md, not in assertions)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_host_reports_every_phase_for_both_loops(tmp_path):
    out = tmp_path / "rows.json"
    res = subprocess.run([sys.executable, "benchmarks/bench_host.py", "--seqs", "8", "--contexts", "64",
                          "--steps", "6", "--sync", "--forward-ms", "1", "--json", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert sorted((r["scenario"], r["overlap"]) for r in rows) == [
        ("forked", False), ("forked", True), ("resubmitted", False), ("resubmitted", True)]
    for r in rows:
        phases = [r[k] for k in ("schedule", "prepare", "postprocess")]
        # (the detokenizer wakes only for tokens that may end the stop string: maybe none here)
        assert all(p > 0 for p in phases) and r["detokenize"] >= 0
        assert r["host"] >= sum(phases) + r["detokenize"]
        assert r["forward"] >= 1.0 and r["device"] >= r["forward"] and r["wall"] > 0

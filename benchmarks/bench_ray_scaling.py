"""The toy study on 1 and on 2 engine replicas (Ray actors, one CPU each), in one run: wall time,
tokens/s, and whether the rows are the same.

    python benchmarks/bench_ray_scaling.py [--limit 96] [--n 4 16]

On a 2-core machine expect at most ~2x (each replica also runs the PRM and Python overheads).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(out: str, workers: int, limit: int, ns: list[str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "tts_engine.run", "--out", out, "--limit", str(limit), "--n", *ns,
               "--method", "cot", "bon", "beam", "dvts", "--workers", str(workers)]
    t = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t, json.load(open(os.path.join(out, "summary.json")))["throughput"]


def rows(out: str) -> list[str]:
    lines = open(os.path.join(out, "results.jsonl")).read().splitlines()
    return sorted(json.dumps({k: v for k, v in json.loads(x).items() if k != "seconds"}, sort_keys=True)
                  for x in lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=96)
    ap.add_argument("--n", nargs="+", default=["4", "16"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {k: run(os.path.join(tmp, str(k)), k, args.limit, args.n) for k in (1, 2)}
        same = rows(os.path.join(tmp, "1")) == rows(os.path.join(tmp, "2"))
    print(f"toy study, {args.limit} problems, N = {' '.join(args.n)}, CoT + BoN + beam + DVTS; "
          f"one thread per replica")
    print(f"{'replicas':>9}{'wall s':>9}{'study s':>9}{'tokens/s':>10}{'speed-up':>10}")
    for k, (wall, tp) in results.items():
        print(f"{k:>9}{wall:>9.1f}{tp['seconds']:>9.1f}{tp['tokens_per_s']:>10.0f}"
              f"{results[1][1]['seconds'] / tp['seconds']:>10.2f}")
    print(f"rows identical: {same}")


if __name__ == "__main__":
    main()

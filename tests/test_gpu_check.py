"""The one-call GPU check cannot rot: its --smoke run (every stage's Python on the CPU, tiny shapes,
Triton interpreted) passes and prints each stage's rows; a source tree whose kernels do not import
stops it at once with a line that says so."""
from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def test_smoke_run_prints_every_stage(tmp_path):
    res = subprocess.run(["bash", SCRIPT, "--smoke"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OUT": str(tmp_path)}, cwd=ROOT)
    out = res.stdout
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "tts_engine.kernels.attention_triton imports" in out
    for model in ("llama-3.2-1b", "qwen2.5-1.5b"):
        rows = [line.split()[1] for line in out.splitlines() if line.startswith(model)]
        assert rows == ["decode"] * 3 + ["cascade", "extend"], rows
    assert "cascade time / plain time" in out
    for method in ("beam", "dvts"):
        assert f"== {method}: 2 problems in" in out
    assert out.count("roofline (policy decode steps") == 2 and out.count("  prm ") >= 2
    host = [line.split() for line in out.splitlines() if line.startswith(("forked ", "resubmitted "))]
    assert sorted((r[0], r[3]) for r in host) == sorted(
        [(s, loop) for s in ("forked", "resubmitted") for loop in ("overlap", "sync")] * 2)
    stages = out[out.index("== stages"):].splitlines()[1:5]
    assert [line.split()[:2] for line in stages] == [["kernels", "ok"], ["workload", "ok"], ["host", "ok"],
                                                     ["tests", "ok"]]
    assert {"kernels.log", "workload.log", "host.log", "tests.log", "stages"} <= set(
        os.listdir(tmp_path / "gpu_check"))


def test_kernels_that_do_not_import_stop_the_check(tmp_path):
    res = subprocess.run(["bash", SCRIPT, "--smoke"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OUT": str(tmp_path), "PYTHON": "false"}, cwd=ROOT)
    assert res.returncode == 1
    assert "STOP: tts_engine.kernels.attention_triton does not import" in res.stdout
    assert "== kernels" not in res.stdout

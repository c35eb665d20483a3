"""The study over engine replicas on a local Ray of 2 CPU workers (tiny models): the same rows as one
process; a replica killed mid-run loses nothing and duplicates nothing; so does a killed driver."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_run import ROOT, args, rows, study_inputs  # noqa: F401 (a fixture)

pytest.importorskip("ray")

METHODS = ("--method", "cot", "bon", "beam", "--chunk", "1", "--limit", "6")
VOLATILE = ("seconds",)


def study(data, policy, prm, out, *extra, timeout=600):
    command = [sys.executable, "-m", "tts_engine.run", *args(data, policy, prm, out, *METHODS, *extra)]
    res = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def comparable(out) -> list[str]:
    got = [json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True) for r in rows(out)]
    return sorted(got)


def wait_for_rows(out, count: int, proc, deadline: float = 300) -> None:
    results, end = out / "results.jsonl", time.time() + deadline
    while time.time() < end and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the study did not reach {count} rows (exit code {proc.poll()})")


def keys(out) -> list[tuple]:
    return [(r["method"], r["n"], r["id"]) for r in rows(out)]


def test_two_workers_give_the_rows_of_one(study_inputs, tmp_path):
    data, policy, prm = study_inputs
    study(data, policy, prm, tmp_path / "one", "--workers", "1")
    res = study(data, policy, prm, tmp_path / "two", "--workers", "2")
    assert len(keys(tmp_path / "two")) == len(set(keys(tmp_path / "two"))) == 18
    assert comparable(tmp_path / "one") == comparable(tmp_path / "two")
    # and both equal a single process without Ray
    study(data, policy, prm, tmp_path / "plain")
    assert comparable(tmp_path / "plain") == comparable(tmp_path / "one")
    summary = json.load(open(tmp_path / "two" / "summary.json"))
    assert len(summary["throughput"]["replicas"]) == 2 and summary["throughput"]["tokens_per_s"] > 0
    assert "replica 1:" in res.stdout


def test_a_killed_replica_loses_no_problem(study_inputs, tmp_path):
    data, policy, prm = study_inputs
    command = [sys.executable, "-m", "tts_engine.run",
               *args(data, policy, prm, tmp_path, *METHODS, "--workers", "2")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_rows(tmp_path, 2, proc)
    victim = json.load(open(tmp_path / "replicas.json"))["pids"][0]
    os.kill(victim, signal.SIGKILL)
    assert len(keys(tmp_path)) < 18, "the replica was not killed mid-run"
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert len(keys(tmp_path)) == len(set(keys(tmp_path))) == 18


def test_a_killed_driver_resumes(study_inputs, tmp_path):
    data, policy, prm = study_inputs
    command = [sys.executable, "-m", "tts_engine.run",
               *args(data, policy, prm, tmp_path, *METHODS, "--workers", "2")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for_rows(tmp_path, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)
    before = len(keys(tmp_path))
    assert 3 <= before < 18, "the driver was not killed mid-run"
    study(data, policy, prm, tmp_path, "--workers", "2")
    assert len(keys(tmp_path)) == len(set(keys(tmp_path))) == 18

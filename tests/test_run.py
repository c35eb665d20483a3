"""The study CLI end to end on tiny models: rows, summary, printed table, plot (what it draws); a
kill (SIGKILL, even mid-write) and a restart with the same command lose and duplicate nothing; bad
input exits 2 before any model is loaded."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_prm import make_family
from tts_engine.run import main
from tts_engine.study.report import headline, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBLEMS = [{"id": f"q{i}", "problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1),
             "level": 1 + i % 3} for i in range(6)]


@pytest.fixture(scope="module")
def study_inputs(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    prm, _ = make_family("skywork", folder / "prm")
    return str(data), tiny_llama, str(prm)


def args(data, policy, prm, out, *extra):
    return ["--policy", policy, "--prm", prm, "--dataset", data, "--out", str(out), "--device", "cpu",
            "--dtype", "float32", "--n", "4", "--beam-width", "2", "--max-steps", "3", "--step-tokens", "6",
            "--max-tokens", "12", "--difficulty-samples", "4", *extra]


def rows(out) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "results.jsonl"))]


def test_study_end_to_end(study_inputs, tmp_path, capsys):
    data, policy, prm = study_inputs
    code = main(args(data, policy, prm, tmp_path, "--limit", "4", "--method", "cot", "bon", "beam", "dvts",
                     "compute-optimal", "--pretrain-tokens", f"{os.path.basename(policy)}=1000000"))
    assert code == 0
    got = rows(tmp_path)
    keys = [(r["method"], r["n"], r["id"]) for r in got]
    assert len(keys) == len(set(keys)) == 4 * 4      # cot, bon, beam, dvts for 4 problems
    for r in got:
        assert {"policy", "prm", "method", "n", "id", "answers", "correct", "tokens", "flops"} <= set(r)
        assert r["flops"]["policy"] > 0 and (r["prm"] is None) == (r["method"] == "cot")
        # (this random policy's steps run out of tokens before any "\n\n", so the step-wise methods
        # drop them all and close their beams; best-of-N's whole samples are scored)
        assert r["method"] != "bon" or r["flops"]["prm"] > 0
    summary = json.load(open(tmp_path / "summary.json"))
    fields = {"policy", "prm", "method", "n", "aggregation", "difficulty", "problems", "accuracy",
              "accuracy_ci95", "flops_inference", "flops_total", "tokens", "seconds"}
    assert summary["rows"] and all(fields <= set(s) for s in summary["rows"])
    assert {s["method"] for s in summary["rows"]} >= {"cot", "bon", "beam", "dvts"}
    cot = next(s for s in summary["rows"] if s["method"] == "cot" and s["difficulty"] == "all")
    assert cot["flops_total"] > cot["flops_inference"] and cot["problems"] == 4
    # bytes moved, and eFLOPs at the default GPU's intensity (tests/test_flops.py checks the counts)
    assert all(r["bytes"]["policy"] > 0 and (r["method"] != "bon" or r["bytes"]["prm"] > 0) for r in got)
    assert all(s["eflops_inference"] > s["flops_inference"] for s in summary["rows"])
    printed = capsys.readouterr().out
    # the headline first, then the full table
    assert printed.index("\n".join(headline(summary["rows"]))) < printed.index(table(summary["rows"]))
    for name in ("headline", "accuracy_vs_n", "rules", "accuracy_vs_eflops"):     # (their content:
        assert (tmp_path / f"{name}.png").stat().st_size > 0                       # test_figures.py)
        assert (tmp_path / f"{name}.csv").read_text().startswith("figure,panel,line,x,accuracy,low,high")
    # the report redrawn from the folder alone gives the same summary, in another process too (the
    # order of sets differs there)
    from tts_engine.report import main as report
    assert report([str(tmp_path)]) == 0
    assert json.load(open(tmp_path / "summary.json")) == summary
    res = subprocess.run([sys.executable, "-m", "tts_engine.report", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONHASHSEED": "7"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.load(open(tmp_path / "summary.json")) == summary
    # a second command on the same folder (CoT only) reports its own rows; so does the redraw after it
    assert main(args(data, policy, prm, tmp_path, "--limit", "4", "--method", "cot")) == 0
    second = json.load(open(tmp_path / "summary.json"))
    assert {s["method"] for s in second["rows"]} == {"cot"}
    assert report([str(tmp_path)]) == 0 and json.load(open(tmp_path / "summary.json")) == second
    capsys.readouterr()
    assert main(args(data, policy, prm, tmp_path, "--limit", "4", "--method", "cot", "bon", "beam", "dvts",
                     "compute-optimal", "--pretrain-tokens", f"{os.path.basename(policy)}=1000000")) == 0
    # another GPU's intensity costs the same bytes differently; a folder without results is refused
    from tts_engine.flops import GPUS
    assert report([str(tmp_path), "--gpu", "a100"]) == 0
    peak, bandwidth = GPUS["a100"]
    for s in json.load(open(tmp_path / "summary.json"))["rows"]:
        assert s["gpu"] == "a100"
        cost = s["flops_inference"] + peak / bandwidth * s["bytes_inference"]
        assert s["eflops_inference"] == pytest.approx(cost)
    assert report([str(tmp_path / "nothing")]) == 2
    assert "holds no results.jsonl" in capsys.readouterr().err
    # one rule for every method's line (and the table); a rule the study has not is refused
    assert report([str(tmp_path), "--rule", "majority"]) == 0
    labels = [row["line"] for row in csv.DictReader(open(tmp_path / "headline.csv"))]
    assert {lab for lab in labels if "CoT" not in lab} == {f"{os.path.basename(policy)} {m} (majority)"
                                                           for m in ("bon", "beam", "dvts")}
    assert report([str(tmp_path), "--rule", "best"]) == 2
    assert "--rule 'best' is none of the rules of the rows reported" in capsys.readouterr().err
    # a folder whose files are not a study's: one line, exit 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.jsonl").write_text(json.dumps({"method": "cot"}) + "\n")
    assert report([str(bad)]) == 2 and "row 1 is not a study row" in capsys.readouterr().err
    (bad / "results.jsonl").write_text((tmp_path / "results.jsonl").read_text())
    (bad / "summary.json").write_text("[]")
    assert report([str(bad)]) == 2 and "expected a JSON object" in capsys.readouterr().err


def test_killed_study_resumes_without_loss_or_duplicates(study_inputs, tmp_path):
    data, policy, prm = study_inputs
    command = [sys.executable, "-m", "tts_engine.run",
               *args(data, policy, prm, tmp_path, "--method", "bon", "beam", "--chunk", "1")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = results.read_text().splitlines()
    assert 3 <= len(before) < 12, "the study was not killed mid-run"
    with open(results, "a") as f:                # as if the kill had come in the middle of a write
        f.write(before[0][:40])
    res = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    after = rows(tmp_path)
    keys = [(r["method"], r["n"], r["id"]) for r in after]
    assert len(keys) == len(set(keys)) == 12         # bon and beam for 6 problems, each once
    assert [json.dumps(r) for r in after[:len(before)]] == before   # finished rows kept as they were


@pytest.mark.parametrize("change,message", [
    (["--dataset", "/no/such.jsonl"], "dataset '/no/such.jsonl' does not exist"),
    (["--policy", "/no/model"], "model '/no/model' does not exist"),
    (["--n", "5"], "N=5 is not a multiple of --beam-width 2"),
    (["--prm"], "--method bon beam needs a PRM"),
])
def test_bad_input_exits_2_before_loading(study_inputs, tmp_path, capsys, change, message):
    data, policy, prm = study_inputs
    argv = args(data, policy, prm, tmp_path, "--method", "bon", "beam")
    flag = change[0]
    i = argv.index(flag)
    argv[i + 1:i + 2] = change[1:] if len(change) > 1 else []
    if flag == "--prm":
        del argv[i]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_unknown_method_exits_2(study_inputs, tmp_path):
    data, policy, prm = study_inputs
    with pytest.raises(SystemExit) as e:
        main(args(data, policy, prm, tmp_path, "--method", "mcts"))
    assert e.value.code == 2


def test_the_redraw_counts_rows_as_the_study_does(study_inputs, tmp_path, capsys):
    """A unit written twice (a crash between the write and the bookkeeping) and a unit cut by a
    kill are in results.jsonl: the study counts the first once and not the second, and so does the
    redraw; a figure the last command has nothing for leaves no file of an earlier one behind."""
    from tts_engine.report import main as report
    data, policy, prm = study_inputs
    assert main(args(data, policy, prm, tmp_path, "--limit", "4", "--method", "cot", "bon")) == 0
    summary = json.load(open(tmp_path / "summary.json"))
    lines = (tmp_path / "results.jsonl").read_text().splitlines(keepends=True)
    cot = [ln for ln in lines if json.loads(ln)["method"] == "cot"]
    # first, 1 row of a 4-row unit (its answer flipped: were it counted, it would be the one kept)
    torn = json.loads(cot[0])
    torn = {**torn, "unit": "cut", "correct": {k: not v for k, v in torn["correct"].items()}}
    (tmp_path / "results.jsonl").write_text(json.dumps(torn) + "\n" + "".join(lines) + "".join(cot))
    assert report([str(tmp_path)]) == 0
    assert json.load(open(tmp_path / "summary.json")) == summary
    assert (tmp_path / "rules.png").exists()
    assert main(args(data, policy, prm, tmp_path, "--limit", "4", "--method", "cot")) == 0
    assert not (tmp_path / "rules.png").exists() and not (tmp_path / "rules.csv").exists()
    capsys.readouterr()

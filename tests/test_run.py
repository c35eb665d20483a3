"""The study CLI end to end on tiny models: rows, summary, printed table, plot (what it draws); a
kill (SIGKILL, even mid-write) and a restart with the same command lose and duplicate nothing; bad
input exits 2 before any model is loaded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_prm import make_family
from tts_engine.run import main
from tts_engine.study.report import figure, headline, plot, summarize, table, wilson

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
    printed = capsys.readouterr().out
    assert table(summary["rows"]) in printed and "\n".join(headline(summary["rows"])) in printed
    # the PNG is the plot of the summary's rows (what the plot draws: test_plot_draws_the_summary)
    again = png_of(summary["rows"], tmp_path / "again.png")
    assert (tmp_path / "accuracy_vs_flops.png").read_bytes() == again


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


def png_of(summary: list[dict], path) -> bytes:
    plot(summary, str(path))
    return path.read_bytes()


def drawn(ax) -> dict[str, tuple[list, ...]]:
    """label -> a panel's line: its points' x and y, and the low and high ends of their error bars."""
    out = {}
    for c in ax.containers:
        line, _, (bars,) = c.lines
        ends = bars.get_segments()
        out[c.get_label()] = (list(line.get_xdata()), list(line.get_ydata()), [e[0][1] for e in ends],
                              [e[1][1] for e in ends])
    return out


def result(policy, prm, method, n, pid, correct, flops, level):
    return {"policy": policy, "prm": prm, "method": method, "n": n, "id": pid, "correct": correct,
            "flops": {"policy": flops, "prm": flops // 2 if prm else 0}, "tokens": {"policy": 3, "prm": 1},
            "seconds": 0.5, "difficulty": level}


def test_plot_draws_the_summary(tmp_path):
    """A panel per difficulty bin present, in the bins' order; in each a line per policy, method and
    rule through its budgets (CoT a point), at the summary's FLOPs per problem and accuracy, with
    its 95% interval as the error bar; one legend of the first panel's lines; log FLOPs."""
    level = ["easy", "easy", "hard", "hard"]
    rows = [result("small", None, "cot", 1, f"q{i}", {"majority": i % 2 == 0}, 100, level[i])
            for i in range(4)]
    rows += [result("small", "prm", "bon", n, f"q{i}", {"majority": i < n // 4, "prm_last_max": i == 0},
                    100 * n, level[i]) for n in (4, 16) for i in range(4)]
    summary = summarize(rows, {})
    fig = plot(summary, str(tmp_path / "p.png"))
    assert [ax.get_title() for ax in fig.axes] == ["difficulty: all", "difficulty: easy", "difficulty: hard"]
    for ax, b in zip(fig.axes, ("all", "easy", "hard")):
        assert (ax.get_xscale(), ax.get_xlabel(), ax.get_ylabel()) == ("log", "inference FLOPs per problem",
                                                                        "accuracy")
        lines = drawn(ax)
        assert set(lines) == {"small CoT", "small bon majority", "small bon prm_last_max"}
        for label, (x, y, low, high) in lines.items():
            method, rule = ("cot", "majority") if label == "small CoT" else ("bon", label.split()[-1])
            points = sorted((s for s in summary if (s["difficulty"], s["method"], s["aggregation"])
                             == (b, method, rule)), key=lambda s: s["n"])
            assert len(points) == (1 if method == "cot" else 2)
            assert x == [s["flops_inference"] / s["problems"] for s in points]
            assert y == [s["accuracy"] for s in points]
            assert low == pytest.approx([s["accuracy_ci95"][0] for s in points])
            assert high == pytest.approx([s["accuracy_ci95"][1] for s in points])
        styles = {c.get_label(): c.lines[0].get_linestyle() for c in ax.containers}
        assert styles == {"small CoT": "None", "small bon majority": "-", "small bon prm_last_max": "-"}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(drawn(fig.axes[0]))
    assert (tmp_path / "p.png").read_bytes() == png_of(summary, tmp_path / "again.png")


def test_plot_takes_intervals_that_touch_zero_and_one():
    """At 0% or 100% the interval's far end may sit a rounding error past the point: the bar still
    spans the interval, and ends at the point on its near side."""
    rows = [{"policy": "p", "prm": None, "method": "cot", "n": 1, "aggregation": "majority",
             "difficulty": "all", "problems": 7, "accuracy": k / 7, "accuracy_ci95": wilson(k, 7),
             "flops_inference": 1e9 * (k + 1)} for k in (0, 7)]
    (x, y, low, high), = drawn(figure(rows).axes[0]).values()
    assert y == [0.0, 1.0]
    assert low == pytest.approx([min(r["accuracy_ci95"][0], r["accuracy"]) for r in rows])
    assert high == pytest.approx([max(r["accuracy_ci95"][1], r["accuracy"]) for r in rows])

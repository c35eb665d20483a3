"""A study folder knows what produced it: the same settings resume it, added work extends it, any
other setting is refused with the differences listed; a study killed at any point and resumed gives
the rows of an uninterrupted one (FLOPs and tokens included); Ctrl-C saves, says how to resume and
exits 130; the summary covers exactly the command that wrote it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_run import ROOT, args, rows, study_inputs  # noqa: F401 (a fixture)
from tts_engine.run import main
from tts_engine.study.checks import UsageError
from tts_engine.study.store import Store

RUN = ("--method", "bon", "beam", "--chunk", "2")
# The CLI with each unit held 0.3 s after it ran (before its rows are written), so that a signal
# sent when the first rows appear always lands mid-study, however fast or loaded the machine is.
SLOW = (
    "import sys, time\n"
    "import tts_engine.replica as replica\n"
    "run = replica.Replica.run\n"
    "def slow(self, unit):\n"
    "    rows = run(self, unit)\n"
    "    time.sleep(0.3)\n"
    "    return rows\n"
    "replica.Replica.run = slow\n"
    "from tts_engine.run import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
EXACT = ("answers", "correct", "tokens", "flops", "work", "level", "unit", "unit_size", "settings")


def command(data, policy, prm, out, *extra, slow=False) -> list[str]:
    cli = ["-c", SLOW] if slow else ["-m", "tts_engine.run"]
    return [sys.executable, *cli, *args(data, policy, prm, out, *RUN, *extra)]


def run(cmd, timeout=600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def by_key(out) -> dict[tuple, dict]:
    got = rows(out)
    keys = [(r["method"], r["n"], r["id"]) for r in got]
    assert len(keys) == len(set(keys)), "a row was written twice"
    return dict(zip(keys, got))


def assert_same_rows(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for field in EXACT:
            assert a[key][field] == b[key][field], (key, field, a[key][field], b[key][field])
        scores_a = [c["step_scores"] for c in a[key]["candidates"]]
        scores_b = [c["step_scores"] for c in b[key]["candidates"]]
        assert [len(s) for s in scores_a] == [len(s) for s in scores_b]
        for sa, sb in zip(scores_a, scores_b):
            assert sa == pytest.approx(sb, abs=1e-5)


def start_and_kill(cmd, results, rows_before_kill: int, sig=signal.SIGKILL) -> tuple[int, str]:
    """Start the study, send `sig` once results.jsonl has that many rows; its exit code and stderr."""
    err = results.parent / "stderr.txt"
    with open(err, "w") as f:     # (a file, not a pipe nobody reads while it runs)
        # (SIGINT back to its default: a test run in a background job inherits it ignored, and
        # Python installs its KeyboardInterrupt handler only over the default)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= rows_before_kill:
                break
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    return proc.returncode, err.read_text()


@pytest.fixture(scope="module")
def uninterrupted(study_inputs, tmp_path_factory):
    data, policy, prm = study_inputs
    out = tmp_path_factory.mktemp("whole")
    run(command(data, policy, prm, out))
    return out


def test_a_killed_and_resumed_study_gives_the_rows_of_an_uninterrupted_one(study_inputs, uninterrupted,
                                                                            tmp_path):
    data, policy, prm = study_inputs
    results = tmp_path / "results.jsonl"
    total = len(by_key(uninterrupted))                  # bon and beam, N=4, 6 problems
    for rows_before_kill in (1, 5):
        start_and_kill(command(data, policy, prm, tmp_path, slow=True), results, rows_before_kill)
        assert rows_before_kill <= len(results.read_text().splitlines()) < total, "not killed mid-run"
    # a kill in the middle of a unit's write: its second row lost and the first... torn
    lines = results.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    assert last["unit_size"] == 2
    kept = [line for line in lines if json.loads(line)["unit"] != last["unit"]]
    results.write_text("".join(kept) + lines[-1] + lines[-1][:25])
    run(command(data, policy, prm, tmp_path))
    assert_same_rows(by_key(tmp_path), by_key(uninterrupted))
    assert len(by_key(tmp_path)) == total


def test_ctrl_c_saves_says_how_to_resume_and_exits_130(study_inputs, uninterrupted, tmp_path):
    data, policy, prm = study_inputs
    code, err = start_and_kill(command(data, policy, prm, tmp_path, slow=True), tmp_path / "results.jsonl", 2,
                               signal.SIGINT)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    saved = len((tmp_path / "results.jsonl").read_text().splitlines())
    assert line.startswith(f"interrupted: {saved} result rows and ")
    assert f"saved in {tmp_path}; the same command resumes: python -m tts_engine.run --policy {policy} " \
        in line
    run(command(data, policy, prm, tmp_path))
    assert_same_rows(by_key(tmp_path), by_key(uninterrupted))


def test_a_changed_setting_is_refused_with_the_differences(study_inputs, uninterrupted, capsys):
    data, policy, prm = study_inputs
    before = (uninterrupted / "results.jsonl").read_bytes()
    code = main(args(data, policy, prm, uninterrupted, *RUN, "--temperature", "1.5", "--seed", "7"))
    err = capsys.readouterr().err
    assert code == 2
    assert "holds results made with other settings: --seed 0 -> 7; --temperature 0.7 -> 1.5." in err
    assert "start a new folder (--out NEW)" in err
    assert (uninterrupted / "results.jsonl").read_bytes() == before


def test_another_model_under_a_known_name_is_refused(study_inputs, uninterrupted, tmp_path, capsys):
    data, policy, prm = study_inputs
    import shutil
    twin = tmp_path / os.path.basename(policy)           # the same folder name, other weights
    shutil.copytree(policy, twin)
    config = json.loads((twin / "config.json").read_text())
    config["rms_norm_eps"] = config.get("rms_norm_eps", 1e-6) * 2
    (twin / "config.json").write_text(json.dumps(config))
    code = main(args(data, str(twin), prm, uninterrupted, *RUN))
    assert code == 2
    assert f"model {os.path.basename(policy)}: {policy} -> {twin} (other weights" in capsys.readouterr().err


def test_more_work_extends_the_folder_and_the_summary_covers_only_this_command(study_inputs, tmp_path):
    data, policy, prm = study_inputs
    assert main(args(data, policy, prm, tmp_path, "--method", "bon", "--limit", "4")) == 0
    first = by_key(tmp_path)
    assert set(first) == {("bon", 4, f"q{i}") for i in range(4)}
    assert main(args(data, policy, prm, tmp_path, "--method", "bon", "beam", "--limit", "6")) == 0
    grown = by_key(tmp_path)
    assert set(grown) == {(m, 4, f"q{i}") for m in ("bon", "beam") for i in range(6)}
    assert all(grown[k] == first[k] for k in first)        # nothing done twice
    assert main(args(data, policy, prm, tmp_path, "--method", "bon", "--limit", "4")) == 0
    summary = json.load(open(tmp_path / "summary.json"))["rows"]
    assert {s["method"] for s in summary} == {"bon"}
    assert {s["problems"] for s in summary if s["difficulty"] == "all"} == {4}
    assert len(by_key(tmp_path)) == 12                     # the folder keeps everything


def test_a_folder_from_before_manifests_is_refused(study_inputs, tmp_path, capsys):
    data, policy, prm = study_inputs
    (tmp_path / "results.jsonl").write_text(json.dumps({"policy": "p"}) + "\n")
    assert main(args(data, policy, prm, tmp_path, *RUN)) == 2
    assert "holds results.jsonl but no manifest.json" in capsys.readouterr().err


def test_the_store_keeps_whole_units_only(tmp_path):
    path = tmp_path / "r.jsonl"
    def row(unit, size, i):
        return json.dumps({"id": i, "unit": unit, "unit_size": size, "settings": "k"})
    path.write_text("\n".join([row("a", 2, 0), row("a", 2, 1), row("b", 3, 2), row("b", 3, 3)]) + "\n"
                    + row("b", 3, 4)[:10])
    store = Store(str(path), "k", lambda r: r["id"])
    assert store.done == {0, 1}
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [0, 1]
    store.add_unit([{"id": 5, "unit": "c", "unit_size": 1, "settings": "k"}])
    assert Store(str(path), "k", lambda r: r["id"]).done == {0, 1, 5}
    with pytest.raises(UsageError, match="holds 3 rows made with settings k"):
        Store(str(path), "other", lambda r: r["id"])


def test_progress_names_the_running_unit_and_counts_planned_samples(tmp_path):
    from tts_engine.replica import Unit
    from tts_engine.study.progress import Progress
    from tts_engine.search import SearchConfig
    from tts_engine.tasks.data import Problem
    problems = tuple(Problem(f"q{i}", "1 + 1?", "2") for i in range(3))
    units = [Unit("difficulty", "/m/pol", "/m/prm", "bon", SearchConfig(n=4), problems, samples=8),
             Unit("method", "/m/pol", None, "cot", SearchConfig(n=1), problems[:2]),
             Unit("method", "/m/pol", "/m/prm", "dvts", SearchConfig(n=16), problems)]
    stores = [Store(str(tmp_path / f), "k", lambda r: r["id"]) for f in ("r.jsonl", "d.jsonl")]
    progress = Progress(units, *stores, "k")
    assert progress.bar.total == 3 * 8 + 2 * 1 + 3 * 16       # samples planned, difficulty included
    progress.starting(units[2])
    assert progress.bar.desc == "pol dvts N=16, 3 problems"
    tokens = {"policy": 10, "prm": 5}
    progress(units[0], [{"id": p.id, "tokens": tokens} for p in problems], 0)
    assert progress.bar.n == 24 and progress.replicas[0]["tokens"] == 45
    assert [r["unit_size"] for r in stores[1].rows] == [3, 3, 3] and not stores[0].rows
    progress.bar.close()


def test_a_folder_in_use_is_refused(study_inputs, tmp_path, capsys):
    import fcntl
    data, policy, prm = study_inputs
    with open(tmp_path / ".lock", "a+") as held:     # as a running study holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(args(data, policy, prm, tmp_path, *RUN)) == 2
    assert "is in use by another running study" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_a_unit_written_twice_counts_once(tmp_path):
    path = tmp_path / "r.jsonl"
    unit = [json.dumps({"id": i, "unit": "a", "unit_size": 2, "settings": "k"}) for i in (0, 1)]
    path.write_text("\n".join(unit + unit) + "\n")
    store = Store(str(path), "k", lambda r: r["id"])
    assert [r["id"] for r in store.rows] == [0, 1] and store.done == {0, 1}



def test_rows_handed_to_the_os_count_even_when_ctrl_c_lands_in_the_sync(tmp_path, monkeypatch):
    """Ctrl-C during the fsync after a unit's write: the rows are in the file (a killed process
    keeps them) and the store counts them, so the interrupted message names them."""
    import os
    store = Store(str(tmp_path / "r.jsonl"), "k", lambda r: r["id"])

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.add_unit([{"id": i, "unit": "a", "unit_size": 2, "settings": "k"} for i in (0, 1)])
    monkeypatch.undo()
    assert [r["id"] for r in store.rows] == [0, 1] and store.done == {0, 1}
    assert Store(str(tmp_path / "r.jsonl"), "k", lambda r: r["id"]).done == {0, 1}

"""The study's analysis on rows made by hand: difficulty bins from pass@1 (a CoT-only baseline placed
by the searched policy's bins), and compute-optimal selection: chosen per estimated bin and N on the
calibration half, reported on the other half with the chosen rule's correctness."""
from __future__ import annotations

from tts_engine.study.analysis import bin_of, calibration, compute_optimal, with_difficulty

IDS = [f"q{i}" for i in range(40)]
CALIBRATION = [i for i in IDS if calibration(i)][:4]
HELD = [i for i in IDS if not calibration(i)][:4]


def row(method, n, pid, **correct):
    return {"policy": "small", "prm": "prm", "method": method, "n": n, "id": pid,
            "answers": {rule: f"{method}-{rule}" for rule in correct}, "correct": correct}


def test_calibration_takes_about_half_of_the_problems():
    assert 10 < sum(map(calibration, IDS)) < 30


def test_bins_by_pass1_and_a_cot_only_baseline_takes_the_searched_policys():
    # the paper's bins: easy above 50% pass@1, medium 10-50%, hard below 10%
    rates = (1.0, 0.51, 0.5, 0.1, 0.09, 0.0)
    assert [bin_of(r) for r in rates] == ["easy", "easy", "medium", "medium", "hard", "hard"]
    estimates = [{"policy": "small", "prm": "prm", "id": "a", "pass1": 0.75, "prm_mean": 0.2},
                 {"policy": "small", "prm": "prm", "id": "b", "pass1": 0.0, "prm_mean": 0.9}]
    rows = [{"policy": p, "id": i} for p in ("small", "large") for i in ("a", "b", "c")]
    got = {(r["policy"], r["id"]): r["difficulty"] for r in with_difficulty(rows, estimates)}
    assert got == {("small", "a"): "easy", ("small", "b"): "hard", ("small", "c"): None,
                   ("large", "a"): "easy", ("large", "b"): "hard", ("large", "c"): None}


def test_compute_optimal_chooses_on_the_calibration_half_by_estimated_bin():
    """On the calibration half, beam's majority is right on the problems the PRM calls easy and
    best-of-N's PRM vote on those it calls hard; the held-out problems get those picks by their own
    estimated bins, whatever their measured pass@1."""
    easy, hard = CALIBRATION[:2], CALIBRATION[2:]
    rows = []
    for pid in CALIBRATION:
        rows += [row("beam", 4, pid, majority=pid in easy, prm_vote=False),
                 row("bon", 4, pid, majority=False, prm_vote=pid in hard)]
    for k, pid in enumerate(HELD):           # held-out: right with beam's majority on the even ones
        rows += [row("beam", 4, pid, majority=k % 2 == 0, prm_vote=True),
                 row("bon", 4, pid, majority=True, prm_vote=k % 2 == 1)]
    prm_mean = {**{i: 0.9 for i in easy}, **{i: 0.05 for i in hard},
                **{i: 0.9 if k < 2 else 0.05 for k, i in enumerate(HELD)}}
    estimates = [{"policy": "small", "prm": "prm", "id": i, "pass1": 0.3, "prm_mean": m}
                 for i, m in prm_mean.items()]
    derived, table = compute_optimal(rows, estimates, [4])
    assert table == [{"policy": "small", "prm": "prm", "bin": "easy", "n": 4, "method": "beam",
                      "aggregation": "majority"},
                     {"policy": "small", "prm": "prm", "bin": "hard", "n": 4, "method": "bon",
                      "aggregation": "prm_vote"}]
    got = {r["id"]: r for r in derived}
    assert sorted(got) == sorted(HELD)
    for k, pid in enumerate(HELD):
        method, rule = ("beam", "majority") if k < 2 else ("bon", "prm_vote")
        r = got[pid]                         # (binned, as every row, by its measured pass@1)
        assert (r["method"], r["picked"], r["difficulty"]) == ("compute-optimal", f"{method}/{rule}",
                                                                "medium")
        assert r["correct"] == {"table": (k % 2 == 0) if k < 2 else (k % 2 == 1)}
        assert r["answers"] == {"table": f"{method}-{rule}"}

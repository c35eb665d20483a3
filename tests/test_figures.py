"""The study's figures, read back from the figure objects: which panels, which lines with which
labels, at which points (the summary's), with which bands; and their CSVs hold the same points.
Rows are made by hand so that the best rule on all problems and on the calibration half differ."""
from __future__ import annotations

import csv

import pytest

from tts_engine.flops import eflops
from tts_engine.study.analysis import calibration
from tts_engine.study.figures import best_rules, calibrated_rules, draw
from tts_engine.study.report import summarize

IDS = [f"q{i}" for i in range(40)]
CALIBRATION = [i for i in IDS if calibration(i)]


def result(policy, prm, method, n, pid, correct, flops, level):
    return {"policy": policy, "prm": prm, "method": method, "n": n, "id": pid, "correct": correct,
            "flops": {"policy": flops, "prm": flops // 2 if prm else 0}, "tokens": {"policy": 3, "prm": 1},
            "bytes": {"policy": 10.0 * flops, "prm": 5.0 * flops if prm else 0.0},
            "seconds": 0.5, "difficulty": level}


@pytest.fixture
def made(tmp_path):
    """small and large CoT; small + prm with bon and dvts at N = 4, 16. On the calibration half
    "majority" is right more often (always), on all problems "prm_min_vote" (right on every other
    problem, and a fifth of the calibration half)."""
    level = {i: ("easy" if k % 2 else "hard") for k, i in enumerate(IDS)}
    rows = [result("small", None, "cot", 1, i, {"majority": k % 3 == 0}, 100, level[i])
            for k, i in enumerate(IDS)]
    rows += [result("large", None, "cot", 1, i, {"majority": k % 2 == 0}, 1000, level[i])
             for k, i in enumerate(IDS)]
    for method in ("bon", "dvts"):
        for n in (4, 16):
            for k, i in enumerate(IDS):
                cal = i in CALIBRATION
                rows.append(result("small", "prm", method, n, i,
                                   {"majority": cal, "prm_min_vote": not cal or k % 5 == 0},
                                   50 * n, level[i]))
    summary = summarize(rows, {"small": 10_000, "large": 100_000}, "h100")
    return rows, summary, draw(str(tmp_path), summary, rows), tmp_path


def lines(ax) -> dict[str, tuple[list, list]]:
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()
            if not ln.get_label().startswith("_")}


def points(summary, method, rule, b="all", policy="small"):
    return sorted((s for s in summary if (s["policy"], s["method"], s["aggregation"], s["difficulty"])
                   == (policy, method, rule, b)), key=lambda s: s["n"])


def test_the_rules_the_lines_use(made):
    rows, summary, _, _ = made
    majority_all = sum(s["accuracy"] for s in points(summary, "bon", "majority"))
    vote_all = sum(s["accuracy"] for s in points(summary, "bon", "prm_min_vote"))
    assert vote_all > majority_all                    # (the fixture's premise)
    for method in ("bon", "dvts"):
        assert best_rules(summary)[("small", "prm", method)] == "prm_min_vote"
        assert calibrated_rules(rows)[("small", "prm", method)] == "majority"
    assert len(best_rules(summary)) == len(calibrated_rules(rows)) == 2


def test_headline_figure(made):
    """Accuracy against total FLOPs: a line per method with its best rule through N (its band),
    both CoTs as labelled points, the costlier CoT as the reference line; log x; a legend outside."""
    _, summary, figs, _ = made
    fig = figs["headline"]
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "total FLOPs (pre-training + inference)"
    assert fig._suptitle.get_text() == "Search with a small policy against the large policy's CoT"
    drawn = lines(ax)
    for method in ("bon", "dvts"):
        x, y = drawn[f"small {method} (prm_min_vote)"]
        want = points(summary, method, "prm_min_vote")
        assert x == [s["flops_total"] for s in want] and y == [s["accuracy"] for s in want]
    large = next(s for s in summary if (s["policy"], s["method"], s["difficulty"]) == ("large", "cot", "all"))
    assert drawn["large CoT (reference)"][1] == [large["accuracy"]] * 2
    cots = {c.get_label(): c.lines[0].get_ydata()[0] for c in ax.containers}
    assert set(cots) == {"small CoT", "large CoT"} and cots["large CoT"] == large["accuracy"]
    assert {t.get_text() for t in ax.texts} == {"small CoT", "large CoT"}
    assert len(ax.collections) >= 2                   # the two lines' 95% bands
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(legend) == set(drawn) | set(cots)
    assert fig.legends[0].get_bbox_to_anchor().x0 >= ax.get_position().x1 * fig.bbox.width - 1   # outside


def test_accuracy_against_n_by_bin(made):
    """A panel per bin; a line per method with the rule of the calibration half, named; CoTs as
    horizontal references."""
    _, summary, figs, _ = made
    fig = figs["accuracy_vs_n"]
    assert [ax.get_title() for ax in fig.axes] == ["difficulty: all", "difficulty: easy", "difficulty: hard"]
    for ax, b in zip(fig.axes, ("all", "easy", "hard")):
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "budget N"
        drawn = lines(ax)
        assert set(drawn) == {"small bon (majority)", "small dvts (majority)", "small CoT", "large CoT"}
        x, y = drawn["small bon (majority)"]
        want = points(summary, "bon", "majority", b)
        assert x == [4, 16] and y == [s["accuracy"] for s in want]


def test_rules_compared_per_method(made):
    _, summary, figs, _ = made
    fig = figs["rules"]
    assert [ax.get_title() for ax in fig.axes] == ["bon", "dvts"]
    for ax, method in zip(fig.axes, ("bon", "dvts")):
        drawn = lines(ax)
        assert set(drawn) == {"majority", "prm_min_vote"}
        colours = {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
        assert colours["majority"] != colours["prm_min_vote"]
        assert drawn["prm_min_vote"][1] == [s["accuracy"] for s in points(summary, method, "prm_min_vote")]


def test_accuracy_against_eflops_and_the_csvs(made):
    """x is inference eFLOPs per problem (FLOPs plus bytes at the H100's intensity); each figure's
    CSV holds the points it draws."""
    _, summary, figs, out = made
    (ax,) = figs["accuracy_vs_eflops"].axes
    x, y = lines(ax)["small dvts (prm_min_vote)"]
    want = points(summary, "dvts", "prm_min_vote")
    assert x == pytest.approx([eflops(s["flops_inference"], s["bytes_inference"], "h100") / s["problems"]
                               for s in want])
    for name, fig in figs.items():
        with open(out / f"{name}.csv") as f:
            table = list(csv.DictReader(f))
        for ax in fig.axes:
            for label, (xs, ys) in lines(ax).items():
                if "reference" in label or (name == "accuracy_vs_n" and "CoT" in label):
                    continue
                mine = [r for r in table if r["line"] == label and (len(fig.axes) == 1 or r["panel"] in
                                                                    ax.get_title())]
                assert [float(r["accuracy"]) for r in mine] == pytest.approx(ys), (name, label)
                assert [float(r["x"]) for r in mine] == pytest.approx(xs), (name, label)


def test_edge_studies_draw(tmp_path):
    """A CoT-only study at 0% and 100% (intervals touching the ends), rows written before bytes were
    counted (no eFLOPs figure), and two PRMs for one policy (their lines told apart by label and
    style)."""
    cot = [result(p, None, "cot", 1, i, {"majority": p == "large"}, 100, "easy") for p in ("small", "large")
           for i in IDS[:6]]
    for r in cot:
        del r["bytes"]
    summary = summarize(cot, {})
    assert {s["accuracy"] for s in summary} == {0.0, 1.0}
    figs = draw(str(tmp_path), summary, cot)
    assert set(figs) == {"headline", "accuracy_vs_n"}            # no search, no bytes
    (ax,) = figs["headline"].axes
    for c in ax.containers:                                       # bars end at the point, not past it
        (bars,) = c.lines[2]
        (low, high), = [(seg[0][1], seg[1][1]) for seg in bars.get_segments()]
        assert 0.0 <= low <= high <= 1.0
    two = [result("small", prm, "bon", n, i, {"majority": prm == "a"}, 100 * n, "easy")
           for prm in ("a", "b") for n in (4, 16) for i in IDS[:4]]
    summary = summarize(two, {})
    figs = draw(str(tmp_path), summary, two)
    (ax,) = figs["headline"].axes
    styles = {ln.get_label(): ln.get_linestyle() for ln in ax.get_lines()
              if not ln.get_label().startswith("_")}
    assert styles == {"small + a bon (majority)": "-", "small + b bon (majority)": "--"}

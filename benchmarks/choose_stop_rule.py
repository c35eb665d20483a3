"""Choose the adaptive searches' stopping threshold (--stop-at) on the calibration half of a study's
problems, and report the choice on the other half.

An adaptive search's result is a function of its fixed counterpart's candidates: with the same
seeds it votes over the first k of them, for the first k where the rule holds (search/adaptive.py;
tests/test_adaptive.py checks this). So a study folder that ran bon and dvts at N gives, for any
threshold, the answers and the candidates used without sampling again. The threshold chosen is the
lowest-cost one (fewest candidates used on the calibration half) whose calibration accuracy, under
PRM-Min vote, lies within the fixed method's 95% interval there; the held-out half then shows what it
keeps and saves. What a run spends is measured by the study itself (it adds the samples a wave
started but did not need); this script counts candidates voted over.

The criterion is the one the adaptive searches are held to: accuracy within the fixed method's
95% (Wilson) interval, here on the calibration half, at the fewest candidates.

    python benchmarks/choose_stop_rule.py OUT [--n 64] [--grid 0.5 0.6 0.7 0.8 0.9 0.95 0.99]
"""
from __future__ import annotations

import argparse

from tts_engine.search.adaptive import Vote
from tts_engine.search.aggregate import choose
from tts_engine.study.analysis import calibration
from tts_engine.study.manifest import Manifest
from tts_engine.study.report import wilson
from tts_engine.study.store import saved_rows
from tts_engine.tasks.data import load_dataset
from tts_engine.tasks.grading import extract_answer, grade

RULE = "prm_min_vote"


def simulate(row: dict, gold: str, budget: int, stop_at: float | None) -> tuple[bool, int]:
    """(correct under RULE, candidates used) of the adaptive search on this fixed-budget row."""
    cands = [(extract_answer(c["text"]), c["step_scores"]) for c in row["candidates"]]
    vote, k = Vote(budget), len(cands)
    for j, (answer, scores) in enumerate(cands, 1):
        vote.add(answer, scores)
        if vote.settled(stop_at):
            k = j
            break
    answer = choose(cands[:k], (RULE,))[RULE]
    return grade(answer, gold), k


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="a study folder")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--grid", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    args = ap.parse_args(argv)
    rows, _ = saved_rows(args.out)
    gold = {p.id: p.answer for p in load_dataset(Manifest.read(args.out).dataset["source"])}
    for method in ("bon", "dvts"):
        mine = [r for r in rows if r["method"] == method and r["n"] == args.n and r["prm"] is not None]
        if not mine:
            continue
        budget = len(mine[0]["candidates"])
        halves = {"calibration": [r for r in mine if calibration(r["id"])],
                  "held-out": [r for r in mine if not calibration(r["id"])]}
        print(f"\n{method} N={args.n} ({budget} candidates per problem), rule {RULE}")
        print(f"{'stop_at':>8} {'half':<12}{'problems':>9}{'accuracy':>10}{'candidates used':>17}")
        results = {}
        for stop_at in [None, *args.grid]:
            for half, rs in halves.items():
                sims = [simulate(r, gold[r["id"]], budget, stop_at) for r in rs]
                acc = sum(ok for ok, _ in sims) / len(sims)
                used = sum(k for _, k in sims) / len(sims)
                results[(stop_at, half)] = (acc, used)
                print(f"{'off' if stop_at is None else stop_at:>8} {half:<12}{len(rs):>9}{acc:>10.3f}"
                      f"{used:>11.2f} / {budget}")
        full = results[(None, "calibration")][0]
        low, _ = wilson(round(full * len(halves["calibration"])), len(halves["calibration"]))
        ok = [t for t in args.grid if results[(t, "calibration")][0] >= low]
        chosen = min(ok, key=lambda t: (results[(t, "calibration")][1], t)) if ok else max(args.grid)
        acc, used = results[(chosen, "held-out")]
        base = results[(None, "held-out")][0]
        print(f"chosen on the calibration half: stop_at={chosen}; on the held-out half accuracy {acc:.3f} "
              f"(fixed {base:.3f}) with {used:.2f} of {budget} candidates ({used / budget:.0%}); "
              f"calibration accuracy {results[(chosen, 'calibration')][0]:.3f} >= {low:.3f}, the low end of "
              f"the fixed method's interval there")


if __name__ == "__main__":
    main()

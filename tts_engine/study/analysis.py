"""The study's analysis of its rows: each problem's difficulty bin, and compute-optimal scaling.

Difficulty takes the paper's absolute bins: easy above 50% pass@1, medium 10-50%, hard below 10%.
A problem's bin is the policy's pass@1 over its difficulty samples (difficulty.jsonl); the same
thresholds on the PRM's mean score of those samples give the bin estimated without gold answers.
Compute-optimal scaling picks, for each estimated bin and budget N, the method and aggregation rule
with the best accuracy on a calibration half of the problems; applied to the other half through
their estimated bins, it gives their accuracy (rows of method "compute-optimal")."""
from __future__ import annotations

import hashlib

# the searches, the paper's first: compute-optimal picks among the paper's (an adaptive search's N
# is a cap, not a budget, so it is reported beside them)
PAPER_SEARCHES = ("bon", "beam", "dvts")
SEARCHES = (*PAPER_SEARCHES, "bon-adaptive", "dvts-adaptive", "beam-vg")
BINS = ("easy", "medium", "hard")
BIN_ORDER = ("all", *BINS)         # (the report's order: all problems, then each bin)


def bin_of(rate: float) -> str:
    return "easy" if rate > 0.5 else "medium" if rate >= 0.1 else "hard"


def measured_bins(estimates: list[dict]) -> dict[tuple[str, str], str]:
    """(policy, problem id) -> the bin of the policy's pass@1 (the first estimate of it)."""
    bins: dict[tuple[str, str], str] = {}
    for d in estimates:
        bins.setdefault((d["policy"], d["id"]), bin_of(d["pass1"]))
    return bins


def with_difficulty(rows: list[dict], estimates: list[dict]) -> list[dict]:
    """The rows, each with the bin of its problem for its policy. A CoT-only baseline has no
    estimate of its own: the first estimated policy's bins place it, so that each bin compares the
    methods on the same problems."""
    bins = measured_bins(estimates)
    first = estimates[0]["policy"] if estimates else None
    return [{**r, "difficulty": bins.get((r["policy"], r["id"]), bins.get((first, r["id"])))} for r in rows]


def select(rows: list[dict], estimates: list[dict], command: dict) -> tuple[list[dict], list[dict]]:
    """The result and difficulty rows a command covers (plan.this_command)."""
    ids, policies, prms = set(command["ids"]), set(command["policies"]), set(command["prms"])
    cot_only, searches, budgets = set(command["cot_only"]), set(command["searches"]), set(command["n"])

    def wanted(r):
        if r["id"] not in ids or r["policy"] not in policies:
            return False
        if r["method"] == "cot":
            return command["cot"] and r["prm"] is None
        return (r["method"] in searches and r["policy"] not in cot_only and r["prm"] in prms
                and r["n"] in budgets)

    kept = [d for d in estimates if d["id"] in ids and d["policy"] in policies - cot_only
            and (d["prm"] in prms if d["prm"] is not None else not prms)]
    return [r for r in rows if wanted(r)], kept


def calibration(problem_id: str) -> bool:
    """A fixed half of the problems, by a hash of the id (the same whatever else is run)."""
    return hashlib.blake2b(problem_id.encode(), digest_size=1).digest()[0] % 2 == 0


def choose_table(rows: list[dict], bins: dict[str, str]) -> dict[tuple[str, int], tuple[str, str]]:
    """rows: results (method, n, id, correct per rule) of the calibration problems; bins: id -> bin.
    Returns (bin, n) -> (method, rule) of the highest accuracy (ties: the earlier method and rule)."""
    score: dict[tuple[str, int, str, str], list[int]] = {}
    for r in rows:
        if r["method"] not in PAPER_SEARCHES or r["id"] not in bins:
            continue
        for rule, ok in r["correct"].items():
            score.setdefault((bins[r["id"]], r["n"], r["method"], rule), []).append(int(ok))
    table: dict[tuple[str, int], tuple[str, str]] = {}
    best: dict[tuple[str, int], float] = {}
    for (b, n, method, rule), oks in score.items():
        acc = sum(oks) / len(oks)
        if acc > best.get((b, n), -1):
            best[(b, n)], table[(b, n)] = acc, (method, rule)
    return table


def apply_table(table: dict[tuple[str, int], tuple[str, str]], rows: list[dict], bins: dict[str, str],
                n: int) -> list[dict]:
    """For each evaluation problem, the row of the method the table picks for its bin at budget n,
    with its correctness under the table's rule."""
    by_key = {(r["method"], r["n"], r["id"]): r for r in rows}
    out = []
    for pid, b in bins.items():
        pick = table.get((b, n))
        row = by_key.get((pick[0], n, pid)) if pick else None
        if row is not None:
            out.append({**row, "method": "compute-optimal", "picked": f"{pick[0]}/{pick[1]}",
                        "answers": {"table": row["answers"][pick[1]]},
                        "correct": {"table": row["correct"][pick[1]]}})
    return out


def analyse(rows: list[dict], estimates: list[dict], budgets: list[int]) -> tuple[list[dict], list[dict]]:
    """A report's rows: each binned by difficulty, then compute-optimal's rows at these budgets
    (none when it was not asked for); and compute-optimal's choices."""
    rows = with_difficulty(rows, estimates)
    if not budgets:
        return rows, []
    derived, choices = compute_optimal(rows, estimates, budgets)
    return rows + derived, choices


def compute_optimal(rows: list[dict], estimates: list[dict], budgets: list[int]
                    ) -> tuple[list[dict], list[dict]]:
    """Per policy and PRM: the rows the table chosen on the calibration half picks for the other
    half at each budget (binned by the policy's measured difficulty, as every row), and the table
    itself as rows (policy, prm, bin, n, method, aggregation)."""
    measured = measured_bins(estimates)
    estimated = {(d["policy"], d["prm"], d["id"]): bin_of(d["prm_mean"]) for d in estimates}
    ids = sorted({r["id"] for r in rows})     # (in a fixed order: the derived rows' order follows it)
    derived, tables = [], []
    for policy, prm in sorted({(r["policy"], r["prm"]) for r in rows if r["prm"]}):
        mine = [r for r in rows if r["policy"] == policy and r["prm"] == prm]
        est = {i: estimated[(policy, prm, i)] for i in ids if (policy, prm, i) in estimated}
        table = choose_table([r for r in mine if calibration(r["id"])],
                             {i: b for i, b in est.items() if calibration(i)})
        tables += [{"policy": policy, "prm": prm, "bin": b, "n": n, "method": m, "aggregation": rule}
                   for (b, n), (m, rule) in sorted(table.items())]
        held = {i: b for i, b in est.items() if not calibration(i)}
        for n in budgets:
            derived += [{**r, "difficulty": measured.get((policy, r["id"]))}
                        for r in apply_table(table, mine, held, n)]
    return derived, tables

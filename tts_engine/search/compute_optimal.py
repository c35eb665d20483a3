"""Compute-optimal test-time scaling: for each difficulty bin and budget N, the method and aggregation
rule with the best accuracy on a calibration split; applied to the other problems through the bin
estimated without gold answers (the PRM's), it gives their accuracy."""
from __future__ import annotations

import hashlib


def calibration(problem_id: str) -> bool:
    """A fixed half of the problems, by a hash of the id (the same whatever else is run)."""
    return hashlib.blake2b(problem_id.encode(), digest_size=1).digest()[0] % 2 == 0


def choose_table(rows: list[dict], bins: dict[str, str]) -> dict[tuple[str, int], tuple[str, str]]:
    """rows: results (method, n, id, correct per rule) of the calibration problems; bins: id -> bin.
    Returns (bin, n) -> (method, rule) of the highest accuracy (ties: the earlier method and rule)."""
    score: dict[tuple[str, int, str, str], list[int]] = {}
    for r in rows:
        if r["method"] == "cot" or r["id"] not in bins:
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

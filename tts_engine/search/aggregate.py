"""From a problem's candidate solutions to one answer per rule: the paper's aggregation rules.

A trajectory's score is PRM-Min, PRM-Last or PRM-Avg of its step scores (-1 for none). Answers are
grouped by mathematical equivalence (math-verify), not string equality; a candidate without an
answer does not vote. Majority vote takes the largest group, PRM-Max the best-scored candidate's
answer, PRM-Vote the group with the largest sum of scores. Ties go to the earliest (candidate order,
and groups in the order of their first member), so the choice is deterministic."""
from __future__ import annotations

from tts_engine.tasks.grading import same_answer

SCORINGS = {"min": min, "last": lambda s: s[-1], "avg": lambda s: sum(s) / len(s)}
RULES = ("majority",) + tuple(f"prm_{how}_{vote}" for how in SCORINGS for vote in ("max", "vote"))


def trajectory_score(step_scores: list[float], how: str) -> float:
    return SCORINGS[how](step_scores) if step_scores else -1.0


def choose(candidates: list[tuple[str | None, list[float]]], rules=RULES) -> dict[str, str | None]:
    """candidates: (extracted answer or None, step scores) in a fixed order."""
    groups: list[list[int]] = []           # indices of candidates with equivalent answers
    for i, (answer, _) in enumerate(candidates):
        if answer is None:
            continue
        for g in groups:
            if same_answer(candidates[g[0]][0], answer):
                g.append(i)
                break
        else:
            groups.append([i])
    out: dict[str, str | None] = {}
    for rule in rules:
        if not groups:
            out[rule] = None
        elif rule == "majority":
            out[rule] = candidates[max(groups, key=len)[0]][0]   # max() keeps the first of equals
        else:
            _, how, vote = rule.split("_")
            score = [trajectory_score(s, how) for _, s in candidates]
            if vote == "max":
                best = max((i for g in groups for i in g), key=lambda i: (score[i], -i))
                out[rule] = candidates[best][0]
            else:
                out[rule] = candidates[max(groups, key=lambda g: sum(score[i] for i in g))[0]][0]
    return out

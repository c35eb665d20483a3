"""Searches that stop spending where the answer is settled: best-of-N and DVTS with the budget N as
a cap (`bon-adaptive`, `dvts-adaptive`).

A problem's candidates come in a fixed order (best-of-N: sample index; DVTS: subtree index) and the
stopping rule reads each prefix of that order in turn. After k candidates, the answer groups'
weights (PRM-Min vote: the sum of each group's PRM-Min scores, clamped at 0) give the leader a and
the runner-up b; the problem stops at the first k where

    P(X > 1/2) >= stop_at,   X ~ Beta(a + 1, b + 1)

(Adaptive-Consistency's Beta rule, arXiv 2305.11860, with PRM weights in place of counts: a PRM
unsure of the leading answer makes it wait for more samples), or where the budget left cannot
change the winner (a - b > N - k, since a candidate weighs at most 1). Every rule then chooses over
those k candidates. Because the rule reads prefixes, a problem's result does not depend on timing or
on what else is batched; with stop_at=None the whole budget is spent and the result equals the
fixed method's (same seeds). `cfg.wave` candidates of a problem run at once; those beyond k that
were already running are cancelled (best-of-N, mid-flight) or dropped (DVTS, between rounds), and
their cost counts. `ProblemResult.used` is the budget started: samples, or M per subtree.
"""
from __future__ import annotations

import math
from typing import Callable

from tts_engine.search.aggregate import trajectory_score
from tts_engine.search.beam_search import search_trees
from tts_engine.search.best_of_n import solution, solution_params
from tts_engine.search.common import ProblemResult, Run, SearchConfig, Trajectory
from tts_engine.search.contract import Policy, Scorer
from tts_engine.tasks.data import Problem
from tts_engine.tasks.grading import extract_answer, same_answer


def beta_confidence(a: float, b: float) -> float:
    """P(X > 1/2) for X ~ Beta(a + 1, b + 1), a, b >= 0 (real: weights, not counts): 1 minus the
    regularised incomplete beta function I_{1/2}(a + 1, b + 1), by its continued fraction."""
    if not (a >= 0 and b >= 0):
        raise ValueError(f"weights must be >= 0, got a={a}, b={b}")
    return 1.0 - _incomplete_beta(0.5, a + 1.0, b + 1.0)


def _incomplete_beta(x: float, p: float, q: float) -> float:
    """I_x(p, q) for 0 < x < 1, p, q > 0: its continued fraction (modified Lentz), used where it
    converges fast, x <= (p + 1) / (p + q + 2), and I_x(p, q) = 1 - I_{1-x}(q, p) elsewhere."""
    if x > (p + 1.0) / (p + q + 2.0):
        return 1.0 - _incomplete_beta(1.0 - x, q, p)
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (p + q) * x / (p + 1.0))
    h = d
    for m in range(1, 1000):
        for num in (m * (q - m) * x / ((p + 2 * m - 1) * (p + 2 * m)),            # the even term
                    -(p + m) * (p + q + m) * x / ((p + 2 * m) * (p + 2 * m + 1))):   # the odd one
            d = 1.0 / guard(1.0 + num * d)
            c = guard(1.0 + num / c)
            h *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    log_front = math.lgamma(p + q) - math.lgamma(p) - math.lgamma(q) + p * math.log(x) + q * math.log1p(-x)
    return math.exp(log_front) * h / p


class Vote:
    """A problem's candidates so far, as the stopping rule reads them: answer groups (math-verify
    equivalence, as the aggregation rules group) and their PRM-Min weights, updated one candidate
    at a time."""

    def __init__(self, budget: int):
        self.budget, self.count = budget, 0
        self.groups: list[list] = []         # [an answer of the group, its weight]

    def add(self, answer: str | None, scores: list[float]) -> None:
        self.count += 1
        if answer is None:
            return                           # (no answer: no vote)
        w = max(0.0, trajectory_score(scores, "min"))
        for g in self.groups:
            if same_answer(g[0], answer):
                g[1] += w
                return
        self.groups.append([answer, w])

    def settled(self, stop_at: float | None) -> bool:
        """The rule above; with stop_at None only the whole budget settles."""
        if self.count >= self.budget:
            return True
        if stop_at is None:
            return False
        a, b = (sorted((w for _, w in self.groups), reverse=True) + [0.0, 0.0])[:2]
        return a - b > self.budget - self.count or beta_confidence(a, b) >= stop_at


def settled(candidates: list[tuple[str | None, list[float]]], budget: int, stop_at: float | None) -> bool:
    """Whether these candidates ((answer, step scores), in order) settle the vote (Vote.settled)."""
    vote = Vote(budget)
    for answer, scores in candidates:
        vote.add(answer, scores)
    return vote.settled(stop_at)


def bon_adaptive(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
                 on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    """Best-of-N in waves of cfg.wave samples per problem, on best-of-N's seeds (sample j draws
    what best-of-N's sample j draws). Samples are scored as they finish; when a problem's prefix
    settles, its samples still running are cancelled, and its result goes out once they are back
    (their work is the problem's)."""
    run = Run(policy, scorer, problems, cfg, "bon-adaptive", seeds_of="bon")
    _check(cfg)
    n = len(problems)
    samples: list[list[Trajectory | None]] = [[None] * cfg.n for _ in problems]
    votes = [Vote(cfg.n) for _ in problems]
    started = [0] * n
    owner: dict[str, tuple[int, int]] = {}         # request id -> (problem, its first sample)
    live: list[set[str]] = [set() for _ in problems]
    stop: dict[int, int] = {}                      # problem -> the samples its answer is chosen over
    results: dict[int, ProblemResult] = {}

    def submit(i: int) -> None:
        k = min(cfg.wave, cfg.n - started[i])
        rid = policy.add_request({"prompt_token_ids": run.prompts[i]}, solution_params(run, i, k, started[i]))
        owner[rid] = (i, started[i])
        live[i].add(rid)
        started[i] += k

    try:
        for i in range(n):
            submit(i)
        while policy.has_unfinished_requests():
            new, touched = [], set()
            for out in policy.step():
                i, base = owner[out.request_id]
                run.policy_work[i] += out.work          # (cancelled samples' work too)
                if out.finished:
                    live[i].discard(out.request_id)
                touched.add(i)
                for c in out.outputs:
                    if c.finish_reason != "cancelled" and i not in stop:
                        samples[i][base + c.index] = t = solution(i, c)
                        new.append(t)
            run.score(new)
            for i in sorted(touched):
                vote = votes[i]
                while i not in stop and vote.count < started[i] and samples[i][vote.count] is not None:
                    t = samples[i][vote.count]
                    vote.add(extract_answer("".join(t.steps)), t.scores)
                    if vote.settled(cfg.stop_at):
                        stop[i] = vote.count
                        for rid in live[i]:
                            policy.abort_request(rid)
                if i in stop and not live[i] and i not in results:
                    results[i] = run.result(i, samples[i][:stop[i]], used=started[i])
                    if on_result is not None:
                        on_result(results[i])
                elif i not in stop and not live[i]:
                    submit(i)     # (its wave ended unsettled, so some budget is left: the whole settles)
    except BaseException:
        for rids in live:
            for rid in rids:
                policy.abort_request(rid)
        while policy.has_unfinished_requests():      # (the cancelled come back; the engine is clean)
            policy.step()
        raise
    return [results[i] for i in range(n)]


def dvts_adaptive(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
                  on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    """DVTS with at most cfg.wave subtrees of a problem running at once (a new one starts when one
    ends), on DVTS's seeds; a problem stops at the first prefix of subtrees that settles."""
    _check(cfg)
    run = Run(policy, scorer, problems, cfg, "dvts-adaptive", seeds_of="dvts")
    subtrees = cfg.n // cfg.beam_width
    votes = [Vote(subtrees) for _ in problems]

    def enough(problem: int, leaves: list[Trajectory]) -> bool:
        """The leaves of the problem's next subtree in order (its one finished beam: a path that
        ended, or a beam closed as it was)."""
        vote = votes[problem]
        for t in leaves:
            vote.add(extract_answer("".join(t.steps)), t.scores)
        vote.count += not leaves          # (none only if all its steps lost to nothing: it still counts)
        return vote.settled(cfg.stop_at)

    return search_trees(run, subtrees=subtrees, first=cfg.beam_width, keep=1, on_result=on_result,
                        window=cfg.wave, settled=enough)


def _check(cfg: SearchConfig) -> None:
    if cfg.wave < 1:
        raise ValueError(f"wave must be at least 1, got {cfg.wave}")
    if cfg.stop_at is not None and not 0 < cfg.stop_at <= 1:
        raise ValueError(f"stop_at must be in (0, 1], got {cfg.stop_at}")

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

from tts_engine.sampling_params import SamplingParams
from tts_engine.search.aggregate import trajectory_score
from tts_engine.search.beam_search import search_trees
from tts_engine.search.best_of_n import solution
from tts_engine.search.common import ProblemResult, Run, SearchConfig, Trajectory
from tts_engine.search.contract import Policy, Scorer
from tts_engine.tasks.data import Problem
from tts_engine.tasks.grading import extract_answer, same_answer


def beta_confidence(a: float, b: float, points: int = 2048) -> float:
    """P(X > 1/2) for X ~ Beta(a + 1, b + 1), a, b >= 0 (real: weights, not counts), by Simpson's
    rule on the density scaled by its largest value (exact to ~1e-9 for the weights a budget of at
    most 1024 samples gives)."""
    if a < 0 or b < 0:
        raise ValueError(f"weights must be >= 0, got a={a}, b={b}")
    xs = [i / points for i in range(points + 1)]

    def log_density(x: float) -> float:
        if x in (0.0, 1.0):
            zero_power = (a if x == 0.0 else b) == 0
            return 0.0 if zero_power else -math.inf
        return a * math.log(x) + b * math.log1p(-x)

    logs = [log_density(x) for x in xs]
    top = max(logs)
    ys = [math.exp(v - top) for v in logs]
    half = points // 2

    def simpson(lo: int, hi: int) -> float:
        return sum(ys[i] * (1 if i in (lo, hi) else 4 if (i - lo) % 2 else 2) for i in range(lo, hi + 1))

    below, above = simpson(0, half), simpson(half, points)
    return above / (below + above)


def settled(candidates: list[tuple[str | None, list[float]]], budget: int, stop_at: float | None) -> bool:
    """Whether these candidates ((answer, step scores), in order) settle the vote: the rule above,
    with `budget` candidates at most. stop_at None: only the whole budget settles."""
    if stop_at is None:
        return len(candidates) >= budget
    weights: list[tuple[str, float]] = []       # per answer group: (its first answer, its weight)
    for answer, scores in candidates:
        if answer is None:
            continue
        w = max(0.0, trajectory_score(scores, "min"))
        for i, (first, total) in enumerate(weights):
            if same_answer(first, answer):
                weights[i] = (first, total + w)
                break
        else:
            weights.append((answer, w))
    ranked = sorted((w for _, w in weights), reverse=True) + [0.0, 0.0]
    a, b = ranked[0], ranked[1]
    return len(candidates) >= budget or a - b > budget - len(candidates) or beta_confidence(a, b) >= stop_at


def bon_adaptive(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
                 on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    """Best-of-N in waves of cfg.wave samples per problem, on best-of-N's seeds (sample j draws
    what best-of-N's sample j draws). Samples are scored as they finish; when a problem's prefix
    settles, its samples still running are cancelled."""
    run = Run(policy, scorer, problems, cfg, "bon-adaptive", seeds_of="bon")
    _check(cfg)
    n = len(problems)
    samples: list[list[Trajectory | None]] = [[None] * cfg.n for _ in problems]
    checked, started = [0] * n, [0] * n
    owner: dict[str, tuple[int, int]] = {}         # request id -> (problem, its first sample)
    live: list[set[str]] = [set() for _ in problems]
    results: dict[int, ProblemResult] = {}

    def submit(i: int) -> None:
        k = min(cfg.wave, cfg.n - started[i])
        prompt = run.prompts[i]
        params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                seed=run.seed(i, 0, "root") + started[i],
                                max_tokens=max(1, min(cfg.max_tokens, run.max_len - len(prompt))))
        rid = policy.add_request({"prompt_token_ids": prompt}, params)
        owner[rid] = (i, started[i])
        live[i].add(rid)
        started[i] += k

    for i in range(n):
        submit(i)
    while policy.has_unfinished_requests():
        new, touched = [], set()
        for out in policy.step():
            i, base = owner[out.request_id]
            run.policy_work[i] += out.work
            if out.finished:
                live[i].discard(out.request_id)
            if i in results:
                continue
            touched.add(i)
            for c in out.outputs:
                if c.finish_reason != "cancelled":
                    samples[i][base + c.index] = t = solution(i, c)
                    new.append(t)
        run.score(new)
        for i in sorted(touched):
            while checked[i] < started[i] and samples[i][checked[i]] is not None:
                checked[i] += 1
                cands = [(extract_answer("".join(t.steps)), t.scores) for t in samples[i][:checked[i]]]
                if settled(cands, cfg.n, cfg.stop_at):
                    for rid in live[i]:
                        policy.abort_request(rid)
                    results[i] = run.result(i, samples[i][:checked[i]], used=started[i])
                    if on_result is not None:
                        on_result(results[i])
                    break
            if i not in results and not live[i] and started[i] < cfg.n:
                submit(i)               # (its wave ended unsettled: the budget is not spent, or it would be)
    return [results[i] for i in range(n)]


def dvts_adaptive(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
                  on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    """DVTS with at most cfg.wave subtrees of a problem running at once (a new one starts when one
    ends), on DVTS's seeds; a problem stops at the first prefix of subtrees that settles."""
    _check(cfg)
    run = Run(policy, scorer, problems, cfg, "dvts-adaptive", seeds_of="dvts")
    subtrees = cfg.n // cfg.beam_width

    def enough(problem: int, leaves: list[Trajectory]) -> bool:
        cands = [(extract_answer("".join(t.steps)), t.scores) for t in leaves]
        return settled(cands, subtrees, cfg.stop_at)

    return search_trees(run, subtrees=subtrees, first=cfg.beam_width, keep=1, on_result=on_result,
                        window=cfg.wave, settled=enough)


def _check(cfg: SearchConfig) -> None:
    if cfg.wave < 1:
        raise ValueError(f"wave must be at least 1, got {cfg.wave}")
    if cfg.stop_at is not None and not 0 < cfg.stop_at <= 1:
        raise ValueError(f"stop_at must be in (0, 1], got {cfg.stop_at}")

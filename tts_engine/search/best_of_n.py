"""Whole-solution strategies. CoT: one greedy sample. Best-of-N: N samples in one request per
problem; each is cut into steps at "\\n\\n" for the PRM, and the answer is chosen over all N
(length-truncated samples included, as in the paper's code)."""
from __future__ import annotations

from typing import Callable

from tts_engine.outputs import CompletionOutput
from tts_engine.sampling_params import SamplingParams
from tts_engine.search.aggregate import RULES
from tts_engine.search.common import STEP_END, ProblemResult, Run, SearchConfig, Trajectory
from tts_engine.search.contract import Policy, Scorer
from tts_engine.tasks.data import Problem


def cot(policy: Policy, scorer: Scorer | None, problems: list[Problem], cfg: SearchConfig,
        on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    return _whole(policy, None, problems, cfg, "cot", on_result)


def best_of_n(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
              on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    return _whole(policy, scorer, problems, cfg, "bon", on_result)


def _whole(policy, scorer, problems, cfg, method, on_result) -> list[ProblemResult]:
    run = Run(policy, scorer, problems, cfg, method)
    greedy = method == "cot"
    requests = []
    for i, prompt in enumerate(run.prompts):
        requests.append((i, prompt, solution_params(run, i, 1 if greedy else cfg.n, greedy=greedy)))
    finals: list[list[Trajectory]] = []
    for (i, _, _), out in zip(requests, run.generate(requests)):
        finals.append([solution(i, c) for c in out.outputs])
    if scorer is not None:
        run.score([t for ts in finals for t in ts])
    results = []
    for i, trajectories in enumerate(finals):
        results.append(run.result(i, trajectories, rules=("majority",) if greedy else RULES))
        if on_result is not None:
            on_result(results[-1])
    return results


def solution_params(run: Run, problem: int, n: int, first: int = 0, greedy: bool = False) -> SamplingParams:
    """Whole solutions first..first+n-1 of a problem: sample j draws from seed + j, so a later
    batch of samples (bon-adaptive's waves) draws what best-of-N's same samples draw."""
    cfg = run.cfg
    return SamplingParams(n=n, temperature=0.0 if greedy else cfg.temperature,
                          top_p=1.0 if greedy else cfg.top_p, seed=run.seed(problem, 0, "root") + first,
                          max_tokens=max(1, min(cfg.max_tokens, run.max_len - len(run.prompts[problem]))))


def solution(problem: int, c: CompletionOutput) -> Trajectory:
    """A whole sampled solution as a trajectory of its steps."""
    done = "length" if c.finish_reason == "length" else "eos"
    return Trajectory(problem, list(c.token_ids), _split(c.text), [], done)


def _split(text: str) -> list[str]:
    """Steps of a whole solution: its "\\n\\n"-separated pieces, each ending in the separator but the last."""
    pieces = [p for p in text.split(STEP_END)]
    steps = [p + STEP_END for p in pieces[:-1]] + [pieces[-1]]
    return [s for s in steps if s.strip()]

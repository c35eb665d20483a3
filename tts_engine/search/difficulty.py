"""Problem difficulty as the paper measures it: the policy's pass@1 over 16 samples and, standing in
without gold answers, the PRM's mean score of those samples, so that compute-optimal selection works
on unseen problems (the study bins both: tts_engine/study/analysis.py). A sample's score is its
lowest step score (PRM-Min): a PRM trained on each step's own correctness (the toy PRM) scores a
final answer step high whenever it repeats the last result, right or wrong, so the last step alone
would call every problem easy; for a PRM trained on prefix correctness the lowest step is at or near
the last anyway."""
from __future__ import annotations

from dataclasses import dataclass, replace

from tts_engine.search.aggregate import trajectory_score
from tts_engine.search.best_of_n import best_of_n
from tts_engine.search.common import SearchConfig
from tts_engine.search.contract import Policy, Scorer
from tts_engine.tasks.data import Problem
from tts_engine.tasks.grading import grade


@dataclass
class Difficulty:
    """One problem's measures (a difficulty.jsonl row holds them)."""
    id: str
    pass1: float          # the policy's accuracy over its samples
    prm_mean: float       # the PRM's mean solution score (lowest step score) over the same samples


def estimate(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig, samples: int = 16,
             on_result=None) -> list[Difficulty]:
    """Sample each problem `samples` times (cfg's temperature; its own seeds) and score the samples."""
    out = []

    def measured(result):
        problem = next(p for p in problems if p.id == result.id)
        correct = [grade(c.answer, problem.answer) for c in result.candidates]
        scores = [max(0.0, trajectory_score(c.step_scores, "min")) for c in result.candidates]   # none: 0
        d = Difficulty(result.id, sum(correct) / len(correct), sum(scores) / len(scores))
        out.append(d)
        if on_result is not None:
            on_result(d, result)

    # its own seeds (not best-of-N's), so that its samples are its own
    best_of_n(policy, scorer, problems, replace(cfg, n=samples, seed=cfg.seed + 7919), on_result=measured)
    return out

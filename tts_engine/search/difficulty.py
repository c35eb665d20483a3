"""Problem difficulty (the paper's absolute bins): the policy's pass@1 over 16 samples, easy above
50%, medium 10-50%, hard below 10%. Without gold answers, the same bins of the PRM's mean score
of those samples stand in, so compute-optimal selection works on unseen problems. A sample's score
is its lowest step score (PRM-Min): a PRM trained on each step's own correctness (the toy PRM)
scores a final answer step high whenever it repeats the last result, right or wrong, so the last
step alone would call every problem easy; for a PRM trained on prefix correctness the lowest step
is at or near the last anyway."""
from __future__ import annotations

from dataclasses import dataclass, replace

from tts_engine.search.aggregate import trajectory_score
from tts_engine.search.best_of_n import best_of_n
from tts_engine.search.common import SearchConfig
from tts_engine.tasks.data import Problem
from tts_engine.tasks.grading import grade

BINS = ("easy", "medium", "hard")


def bin_of(rate: float) -> str:
    return "easy" if rate > 0.5 else "medium" if rate >= 0.1 else "hard"


@dataclass
class Difficulty:
    id: str
    pass1: float          # the policy's accuracy over its samples
    prm_mean: float       # the PRM's mean solution score (lowest step score) over the same samples

    @property
    def bin(self) -> str:
        return bin_of(self.pass1)

    @property
    def estimated_bin(self) -> str:
        return bin_of(self.prm_mean)


def estimate(llm, prm, problems: list[Problem], cfg: SearchConfig, samples: int = 16,
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
    best_of_n(llm, prm, problems, replace(cfg, n=samples, seed=cfg.seed + 7919), on_result=measured)
    return out

"""What the strategies share: settings, trajectories and results, and a `Run`: one strategy's pass
over problems, with their prompts, per-problem seeds and work, the policy's and the scorer's
batched calls (search/contract.py says what those may be) and each problem's graded result.

A trajectory continues from the exact token ids its policy generated (the radix cache then always
hits); its step texts go to the scorer, which scores only new steps. Seeds derive from (run seed,
problem id, method, N, round, beam), so a problem's result does not depend on what else is batched
with it.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from tts_engine.sampling_params import SamplingParams
from tts_engine.search.aggregate import RULES, choose
from tts_engine.search.contract import Policy, Scorer
from tts_engine.tasks.data import Problem
from tts_engine.tasks.grading import extract_answer, grade
from tts_engine.tasks.prompts import prompt_ids
from tts_engine.work import Work

STEP_END = "\n\n"


@dataclass
class SearchConfig:
    n: int = 4                    # budget N
    beam_width: int = 4           # M
    temperature: float = 0.7
    top_p: float = 1.0
    max_steps: int = 40
    step_tokens: int = 2048       # per step (beam search, DVTS)
    max_tokens: int = 8192        # per solution (CoT, best-of-N)
    seed: int = 0
    resample: int = 3             # a beam whose children are all dropped is resampled this often, then closed
    prompt_style: str = "qwen"    # tasks.prompts: "llama3", "qwen" or "plain"
    verify_every: int = 2         # g: beam-vg scores and selects every g steps (search/beam_search.py)
    reject_every: int = 0         # r: partial-step rejection every r tokens, 0: off (search/steps.py)
    reject_margin: float = 0.2    # a running step this far below its group's best score is rejected
    stop_at: float | None = 0.6   # the adaptive searches' stopping threshold, None: never stop early
    wave: int = 1                 # candidates an adaptive search runs at once per problem (adaptive.py)


@dataclass
class Trajectory:
    problem: int                  # index into the problems of the call
    tokens: list[int] = field(default_factory=list)      # generated token ids, all steps
    steps: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)    # the PRM's, one per step
    done: str | None = None       # why it ended: eos, answer, max_steps, length, context, closed


@dataclass
class Candidate:
    text: str
    steps: list[str]
    step_scores: list[float]
    answer: str | None
    done: str | None


@dataclass
class ProblemResult:
    id: str
    method: str
    n: int
    candidates: list[Candidate]
    answers: dict[str, str | None]
    correct: dict[str, bool]
    policy_work: Work
    prm_work: Work
    used: int = 0                 # the budget spent, in N's units (an adaptive search's samples started)

    def row(self) -> dict:
        return asdict(self)


def seed_for(run_seed: int, problem_id: str, method: str, n: int, round_no: int, beam: str) -> int:
    key = f"{run_seed}|{problem_id}|{method}|{n}|{round_no}|{beam}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class Run:
    """One strategy's pass over a list of problems: their prompts, work and seeds."""

    def __init__(self, policy: Policy, scorer: Scorer | None, problems: list[Problem], cfg: SearchConfig,
                 method: str, seeds_of: str | None = None):
        """seeds_of: the method whose seeds this one draws (an adaptive search's fixed counterpart)."""
        self.policy, self.scorer, self.problems, self.cfg, self.method = policy, scorer, problems, cfg, method
        self.seeds_of = seeds_of or method
        self.tokenizer = tok = policy.get_tokenizer()
        self.prompts = [prompt_ids(tok, p.problem, cfg.prompt_style) for p in problems]
        self.max_len = policy.max_model_len
        self.policy_work = [Work() for _ in problems]
        self.prm_work = [Work() for _ in problems]

    def seed(self, problem: int, round_no: int, beam: str) -> int:
        return seed_for(self.cfg.seed, self.problems[problem].id, self.seeds_of, self.cfg.n, round_no, beam)

    def generate(self, requests: list[tuple[int, list[int], SamplingParams]]):
        """requests: (problem, prompt ids, params). One batched call; work attributed per problem."""
        outs = self.policy.generate([{"prompt_token_ids": ids} for _, ids, _ in requests],
                                    [p for _, _, p in requests], use_tqdm=False)
        for (problem, _, _), out in zip(requests, outs):
            self.policy_work[problem] += out.work
        return outs

    def score(self, trajectories: list[Trajectory]) -> None:
        """The scorer's step scores for each trajectory not scored yet (one batched call; it computes
        only new steps)."""
        scorable = [t for t in trajectories if t.steps and len(t.scores) < len(t.steps)]
        if not scorable:
            return
        scores, works = self.scorer.score_with_work([self.problems[t.problem].problem for t in scorable],
                                                    [t.steps for t in scorable])
        for t, s, w in zip(scorable, scores, works):
            t.scores = s
            self.prm_work[t.problem] += w

    def result(self, problem: int, finals: list[Trajectory], rules=RULES, used: int | None = None
               ) -> ProblemResult:
        candidates = []
        for t in finals:
            text = "".join(t.steps)
            candidates.append(Candidate(text, t.steps, t.scores, extract_answer(text), t.done))
        answers = choose([(c.answer, c.step_scores) for c in candidates], rules)
        gold = self.problems[problem].answer
        return ProblemResult(self.problems[problem].id, self.method, self.cfg.n, candidates, answers,
                             {rule: grade(a, gold) for rule, a in answers.items()},
                             self.policy_work[problem], self.prm_work[problem],
                             self.cfg.n if used is None else used)

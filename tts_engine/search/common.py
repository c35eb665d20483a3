"""What the strategies share: settings, results, per-problem seeds and work, and one batched round of
step sampling and PRM scoring over trajectories of many problems.

A trajectory continues from the exact token ids its policy generated (the radix cache then always
hits); its step texts go to the PRM, which scores only new steps. Seeds derive from (run seed,
problem id, method, N, round, beam), so a problem's result does not depend on what else is batched
with it.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from tts_engine.sampling_params import SamplingParams
from tts_engine.search.aggregate import RULES, choose
from tts_engine.tasks.data import Problem
from tts_engine.tasks.grading import extract_answer, grade
from tts_engine.tasks.prompts import prompt_ids

STEP_END = "\n\n"
WORK_KEYS = ("prompt_tokens", "cached_tokens", "computed_tokens", "generated_tokens", "flops", "saved_flops")


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
    policy_work: dict[str, int]
    prm_work: dict[str, int]

    def row(self) -> dict:
        return asdict(self)


def seed_for(run_seed: int, problem_id: str, method: str, n: int, round_no: int, beam: str) -> int:
    key = f"{run_seed}|{problem_id}|{method}|{n}|{round_no}|{beam}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def zero_work() -> dict[str, int]:
    return dict.fromkeys(WORK_KEYS, 0)


def add_work(total: dict[str, int], work: dict[str, int] | None) -> None:
    for k in WORK_KEYS:
        total[k] += (work or {}).get(k, 0)


class Run:
    """One strategy's pass over a list of problems: their prompts, work and seeds."""

    def __init__(self, llm, prm, problems: list[Problem], cfg: SearchConfig, method: str):
        self.llm, self.prm, self.problems, self.cfg, self.method = llm, prm, problems, cfg, method
        self.tokenizer = tok = llm.get_tokenizer()
        self.prompts = [prompt_ids(tok, p.problem, cfg.prompt_style) for p in problems]
        self.max_len = llm.engine.max_model_len
        self.policy_work = [zero_work() for _ in problems]
        self.prm_work = [zero_work() for _ in problems]

    def seed(self, problem: int, round_no: int, beam: str) -> int:
        return seed_for(self.cfg.seed, self.problems[problem].id, self.method, self.cfg.n, round_no, beam)

    def generate(self, requests: list[tuple[int, list[int], SamplingParams]]):
        """requests: (problem, prompt ids, params). One batched call; work attributed per problem."""
        outs = self.llm.generate([{"prompt_token_ids": ids} for _, ids, _ in requests],
                                 [p for _, _, p in requests], use_tqdm=False)
        for (problem, _, _), out in zip(requests, outs):
            add_work(self.policy_work[problem], out.work)
        return outs

    def sample_steps(self, parents: list[Trajectory], k: int, round_no: int, keys: list[str]
                     ) -> list[list[Trajectory]]:
        """k next steps for each parent (its own seed, from its key), filtered: length-truncated,
        empty and duplicate steps are dropped. A parent left without children is sampled again
        (cfg.resample times, with new seeds) and then closed: children [] and done = "closed"."""
        children: list[list[Trajectory]] = [[] for _ in parents]
        todo = list(range(len(parents)))
        for attempt in range(self.cfg.resample + 1):
            requests, owners = [], []
            for i in todo:
                p = parents[i]
                prompt = self.prompts[p.problem] + p.tokens
                room = self.max_len - len(prompt)
                if room < 1:
                    p.done = "context"
                    continue
                params = SamplingParams(n=k, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                        max_tokens=min(self.cfg.step_tokens, room), stop=[STEP_END],
                                        include_stop_str_in_output=True,
                                        seed=self.seed(p.problem, round_no, f"{keys[i]}/{attempt}"))
                requests.append((p.problem, prompt, params))
                owners.append(i)
            for i, out in zip(owners, self.generate(requests) if requests else []):
                children[i] = self._children(parents[i], out.outputs)
            todo = [i for i in owners if not children[i]]
            if not todo:
                break
        for i in todo:
            parents[i].done = "closed"
        return children

    def _children(self, parent: Trajectory, completions) -> list[Trajectory]:
        out, seen = [], set()
        for c in completions:
            if c.finish_reason == "length" or not c.text.strip() or c.text in seen:
                continue
            seen.add(c.text)
            done = None
            if c.stop_reason is None:          # stopped by EOS (or a stop token): the path ends
                done = "eos"
            elif "\\boxed" in c.text:
                done = "answer"
            elif len(parent.steps) + 1 >= self.cfg.max_steps:
                done = "max_steps"
            out.append(Trajectory(parent.problem, parent.tokens + self._step_tokens(c),
                                  parent.steps + [c.text], list(parent.scores), done))
        return out

    def _step_tokens(self, c) -> list[int]:
        """A step's token ids. When the stop string ended inside the last token (a vocabulary that
        merges "\n\n" with the text after it), those ids hold text beyond the step: the step's own
        text is encoded again instead, so that the next step starts where this one's text ends."""
        ids = list(c.token_ids)
        if isinstance(c.stop_reason, str) and self.tokenizer.decode(ids, skip_special_tokens=True) != c.text:
            return self.tokenizer.encode(c.text, add_special_tokens=False)
        return ids

    def score(self, trajectories: list[Trajectory]) -> None:
        """The PRM's step scores for each trajectory (one batched call; it computes only new steps)."""
        scorable = [t for t in trajectories if t.steps]
        if not scorable:
            return
        scores, works = self.prm.score([self.problems[t.problem].problem for t in scorable],
                                       [t.steps for t in scorable], return_work=True)
        for t, s, w in zip(scorable, scores, works):
            t.scores = s
            add_work(self.prm_work[t.problem], w)

    def result(self, problem: int, finals: list[Trajectory], rules=RULES) -> ProblemResult:
        candidates = []
        for t in finals:
            text = "".join(t.steps)
            candidates.append(Candidate(text, t.steps, t.scores, extract_answer(text), t.done))
        answers = choose([(c.answer, c.step_scores) for c in candidates], rules)
        gold = self.problems[problem].answer
        return ProblemResult(self.problems[problem].id, self.method, self.cfg.n, candidates, answers,
                             {rule: grade(a, gold) for rule, a in answers.items()},
                             self.policy_work[problem], self.prm_work[problem])

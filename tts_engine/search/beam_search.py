"""Step-wise search (the paper's beam search and DVTS), batched across problems.

Beam search with budget N and beam width M keeps B = N / M beams: N first steps; the top B by the
PRM's last-step score are kept; each kept beam gets M children; the next B are chosen among all
children. A chosen step that ends its path (\\boxed in it, EOS, or the 40th step) finishes that
beam: it leaves the frontier and counts toward the B outputs, so k = B - finished are chosen next.
DVTS runs N / M independent subtrees per problem, each keeping 1 beam of M children per step; the
answer is chosen over the subtrees' leaves.
"""
from __future__ import annotations

from typing import Callable

from tts_engine.search.common import ProblemResult, Run, SearchConfig, Trajectory
from tts_engine.search.contract import Policy, Scorer
from tts_engine.search.steps import sample_steps
from tts_engine.tasks.data import Problem


def beam_search(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
                on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    return _search(policy, scorer, problems, cfg, "beam", subtrees=1, first=cfg.n,
                   keep=cfg.n // cfg.beam_width, on_result=on_result)


def dvts(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
         on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    return _search(policy, scorer, problems, cfg, "dvts", subtrees=cfg.n // cfg.beam_width,
                   first=cfg.beam_width, keep=1, on_result=on_result)


class _Tree:
    """One search: a problem (and a DVTS subtree), its candidates and its finished beams."""

    def __init__(self, problem: int, subtree: int, keep: int):
        self.problem, self.subtree, self.keep = problem, subtree, keep
        self.candidates: list[Trajectory] = []
        self.finished: list[Trajectory] = []
        self.live: list[Trajectory] = []

    def select(self) -> None:
        """The top k = keep - finished candidates by last-step score (earliest first on ties);
        those whose path ended join the finished."""
        k = self.keep - len(self.finished)
        order = sorted(range(len(self.candidates)), key=lambda i: (-self.candidates[i].scores[-1], i))
        chosen = [self.candidates[i] for i in order[:k]]
        self.finished += [c for c in chosen if c.done]
        self.live = [c for c in chosen if not c.done]
        self.candidates = []

    @property
    def over(self) -> bool:
        return not self.live or len(self.finished) >= self.keep


def _search(policy, scorer, problems, cfg: SearchConfig, method: str, subtrees: int, first: int, keep: int,
            on_result) -> list[ProblemResult]:
    if cfg.n % cfg.beam_width:
        raise ValueError(f"N={cfg.n} is not a multiple of the beam width {cfg.beam_width}")
    run = Run(policy, scorer, problems, cfg, method)
    trees = [_Tree(i, s, keep) for i in range(len(problems)) for s in range(subtrees)]
    roots = [Trajectory(t.problem) for t in trees]
    children = sample_steps(run, roots, first, 0, [f"{t.subtree}" for t in trees])
    for tree, root, kids in zip(trees, roots, children):
        tree.candidates = kids
        if not kids:                     # the root itself could not be expanded
            tree.finished.append(root)
    run.score([c for kids in children for c in kids])
    results: dict[int, ProblemResult] = {}
    for round_no in range(1, cfg.max_steps + 1):
        for tree in trees:
            if tree.candidates:
                tree.select()
        _report(run, trees, results, on_result)
        active = [t for t in trees if not t.over and t.problem not in results]
        if not active:
            break
        parents = [(t, j, beam) for t in active for j, beam in enumerate(t.live)]
        kids = sample_steps(run, [b for _, _, b in parents], cfg.beam_width, round_no,
                                [f"{t.subtree}.{j}" for t, j, _ in parents])
        for (tree, _, beam), ks in zip(parents, kids):
            if ks:
                tree.candidates += ks
            else:                        # closed (or out of context): it ends as it is
                tree.finished.append(beam)
        for tree in active:
            tree.live = []
        run.score([k for ks in kids for k in ks])
    for tree in trees:                   # the step limit: what is still live ends truncated
        for beam in tree.live:
            beam.done = beam.done or "max_steps"
        tree.finished += tree.live
        tree.live = []
    _report(run, trees, results, on_result, final=True)
    return [results[i] for i in range(len(problems))]


def _report(run: Run, trees: list[_Tree], results: dict, on_result, final: bool = False) -> None:
    """Finish every problem whose trees are all over (its result goes out as soon as it is done)."""
    by_problem: dict[int, list[_Tree]] = {}
    for t in trees:
        by_problem.setdefault(t.problem, []).append(t)
    for problem, ts in by_problem.items():
        if problem in results or not (final or all(t.over for t in ts)):
            continue
        finals = [b for t in ts for b in t.finished]
        results[problem] = run.result(problem, finals)
        if on_result is not None:
            on_result(results[problem])


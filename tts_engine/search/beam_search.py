"""Step-wise search (the paper's beam search and DVTS), batched across problems.

Beam search with budget N and beam width M keeps B = N / M beams: N first steps; the top B by the
PRM's last-step score are kept; each kept beam gets M children; the next B are chosen among all
children. A chosen step that ends its path (\\boxed in it, EOS, or the 40th step) finishes that
beam: it leaves the frontier and counts toward the B outputs, so k = B - finished are chosen next.
DVTS runs N / M independent subtrees per problem, each keeping 1 beam of M children per step; the
answer is chosen over the subtrees' leaves.

Beam search with verification granularity g (VG-Search, `beam-vg`): after the first step, each
kept beam is extended g - 1 steps with one sample each and no scoring, then gets its M children;
the PRM scores them (every step it has not scored) and the top B are kept. g = 1 is beam search
(same seeds, same result); fewer steps are sampled and scored as g grows. A path that ends during
the extension joins the candidates as it is.
"""
from __future__ import annotations

from typing import Callable

from tts_engine.search.common import ProblemResult, Run, SearchConfig, Trajectory
from tts_engine.search.contract import Policy, Scorer
from tts_engine.search.steps import sample_steps
from tts_engine.tasks.data import Problem


def beam_search(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
                on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    return search_trees(Run(policy, scorer, problems, cfg, "beam"), subtrees=1, first=cfg.n,
                        keep=cfg.n // cfg.beam_width, on_result=on_result)


def beam_vg(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
            on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    if cfg.verify_every < 1:
        raise ValueError(f"verify_every must be at least 1, got {cfg.verify_every}")
    return search_trees(Run(policy, scorer, problems, cfg, "beam-vg", seeds_of="beam"), subtrees=1,
                        first=cfg.n, keep=cfg.n // cfg.beam_width, on_result=on_result,
                        every=cfg.verify_every)


def dvts(policy: Policy, scorer: Scorer, problems: list[Problem], cfg: SearchConfig,
         on_result: Callable[[ProblemResult], None] | None = None) -> list[ProblemResult]:
    return search_trees(Run(policy, scorer, problems, cfg, "dvts"), subtrees=cfg.n // cfg.beam_width,
                        first=cfg.beam_width, keep=1, on_result=on_result)


class _Tree:
    """One search: a problem (and a DVTS subtree), its candidates and its finished beams."""

    def __init__(self, problem: int, subtree: int, keep: int):
        self.problem, self.subtree, self.keep = problem, subtree, keep
        self.candidates: list[Trajectory] = []
        self.finished: list[Trajectory] = []
        self.live: list[Trajectory] = [Trajectory(problem)]      # the root, expanded first

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


# settled(problem, the leaves of its next subtree in order) -> whether the problem may stop there
Settled = Callable[[int, list[Trajectory]], bool]


def search_trees(run: Run, subtrees: int, first: int, keep: int, on_result, every: int = 1,
                 window: int | None = None, settled: Settled | None = None) -> list[ProblemResult]:
    """Each problem's subtrees, expanded a step (or `every` steps) a round, batched across
    problems. window: at most this many subtrees of a problem run at once (a new one starts when
    one ends); settled: after each round, each subtree that ended is offered to it in subtree
    order (the k-th once the first k all ended), and the first k it accepts ends the problem with
    their leaves (subtrees still running are dropped: their work counts). Without them every
    subtree starts at once and a problem ends with all of them."""
    cfg = run.cfg
    if cfg.n % cfg.beam_width:
        raise ValueError(f"N={cfg.n} is not a multiple of the beam width {cfg.beam_width}")
    trees: dict[int, list[_Tree]] = {p: [] for p in range(len(run.problems))}
    checked = dict.fromkeys(trees, 0)          # subtrees offered to `settled` so far
    results: dict[int, ProblemResult] = {}

    def launch() -> None:
        for p, ts in trees.items():
            if p in results:
                continue
            room = (window or subtrees) - sum(not t.over for t in ts)
            while room > 0 and len(ts) < subtrees:
                ts.append(_Tree(p, len(ts), keep))
                room -= 1

    def finish(p: int, ts: list[_Tree]) -> None:
        # (the budget spent: N per beam search, M per DVTS subtree started)
        leaves = [b for t in ts for b in t.finished]
        results[p] = run.result(p, leaves, used=len(trees[p]) * (cfg.n // subtrees))
        if on_result is not None:
            on_result(results[p])

    launch()
    while True:
        active = [t for p, ts in trees.items() if p not in results for t in ts if not t.over]
        if not active:
            break
        _expand(run, active, first, every)
        for t in active:
            if t.candidates:
                t.select()
        for p, ts in trees.items():
            if p in results:
                continue
            while settled is not None and checked[p] < len(ts) and ts[checked[p]].over:
                checked[p] += 1
                if settled(p, ts[checked[p] - 1].finished):
                    finish(p, ts[:checked[p]])
                    break
            if p not in results and len(ts) == subtrees and all(t.over for t in ts):
                finish(p, ts)
        launch()
    return [results[i] for i in range(len(run.problems))]


def _expand(run: Run, trees: list[_Tree], first: int, every: int) -> None:
    """One round: each live beam (a root: `first` first steps) gets its M children, after `every`
    - 1 single steps (beam-vg); all are scored. A beam that cannot be expanded ends as it is; one
    whose children were all rejected (steps.py) drops out."""
    cfg = run.cfg
    owners = [(t, j, beam) for t in trees for j, beam in enumerate(t.live)]
    for t in trees:
        t.live = []
    for _ in range(every - 1):
        going = [(t, j, b) for t, j, b in owners if b.steps]
        if not going:
            break
        ext = sample_steps(run, [b for _, _, b in going], 1, [f"{t.subtree}.{j}" for t, j, _ in going],
                           reject=False)
        owners = [o for o in owners if not o[2].steps]
        for (t, j, beam), kids in zip(going, ext):
            if not kids:                 # closed (or out of context): it ends as it is
                t.finished.append(beam)
            elif kids[0].done:           # its path ended: a candidate as it is
                t.candidates.append(kids[0])
            else:
                owners.append((t, j, kids[0]))
    wanted = {id(b): cfg.beam_width if b.steps else first for _, _, b in owners}   # (a root: first)
    kids_of = {}
    for k in sorted(set(wanted.values())):
        mine = [o for o in owners if wanted[id(o[2])] == k]
        keys = [f"{t.subtree}.{j}" if b.steps else f"{t.subtree}" for t, j, b in mine]
        got = sample_steps(run, [b for _, _, b in mine], k, keys, [t for t, _, _ in mine])
        for o, kids in zip(mine, got):
            kids_of[id(o[2])] = kids
    for t, _, beam in owners:
        kids = kids_of[id(beam)]
        if kids:
            t.candidates += kids
        elif beam.done:                  # closed (or out of context): it ends as it is
            t.finished.append(beam)
    run.score([c for t in trees for c in t.candidates])

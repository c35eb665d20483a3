"""One round of step sampling: k next steps for each parent trajectory, each parent with its own
seed (from its key and its depth), as the paper's step searches expand a beam. A step ends at
"\\n\\n" (kept in its text). Length-truncated, empty and duplicate steps are dropped; a parent
left without children is sampled again with new seeds, then closed.

Partial-step rejection (cfg.reject_every = r > 0, ER-PRM's idea with a margin instead of a top-k):
steps are sampled r tokens at a time. After each chunk the scorer scores every unfinished step as
it stands (its text so far as the last step) and every step that ended; within a group (the
candidates one selection will choose among: a beam search's tree, a DVTS subtree) a step more
than cfg.reject_margin below the group's best score is rejected, and the others go on from the
tokens they have (the prefix cache holds them). The group's best is taken afresh after each chunk
over its running steps and the steps of this round that ended whole, so the best step is never
rejected. Rejected work counts as spent. A parent whose steps were all rejected is not resampled:
its siblings' steps beat it."""
from __future__ import annotations

from dataclasses import dataclass

from tts_engine.outputs import CompletionOutput
from tts_engine.sampling_params import SamplingParams
from tts_engine.search.common import STEP_END, Run, Trajectory
from tts_engine.tokenizer import Tokenizer


def sample_steps(run: Run, parents: list[Trajectory], k: int, keys: list[str],
                 groups: list[object] | None = None, reject: bool = True) -> list[list[Trajectory]]:
    """k next steps for each parent (its seed from its key and depth), filtered. A parent left
    without children is sampled again (cfg.resample times, with new seeds) and then closed:
    children [] and done = "closed"; one whose context is full ends with done = "context"; one
    whose steps were all rejected gets [] and stays open. groups: which parents' children compete
    (for rejection; default: each parent's own)."""
    cfg = run.cfg
    groups = groups if groups is not None else list(range(len(parents)))
    rejecting = reject and cfg.reject_every > 0 and k > 1
    children: list[list[Trajectory]] = [[] for _ in parents]
    rejected: set[int] = set()
    todo = list(range(len(parents)))
    for attempt in range(cfg.resample + 1):
        requests, owners = [], []
        for i in todo:
            p = parents[i]
            prompt = run.prompts[p.problem] + p.tokens
            room = run.max_len - len(prompt)
            if room < 1:
                p.done = "context"
                continue
            params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_tokens=min(cfg.step_tokens, room), stop=[STEP_END],
                                    include_stop_str_in_output=True,
                                    seed=run.seed(p.problem, len(p.steps), f"{keys[i]}/{attempt}"))
            requests.append((p.problem, prompt, params))
            owners.append(i)
        if rejecting:
            outs = _sample_rejecting(run, [parents[i] for i in owners], [groups[i] for i in owners], requests)
            for i, (completions, lost) in zip(owners, outs):
                children[i] = _children(run, parents[i], completions)
                if lost and not children[i]:
                    rejected.add(i)
        else:
            for i, out in zip(owners, run.generate(requests) if requests else []):
                children[i] = _children(run, parents[i], out.outputs)
        todo = [i for i in owners if not children[i] and i not in rejected]
        if not todo:
            break
    for i in todo:
        parents[i].done = "closed"
    return children


@dataclass
class _Partial:
    """A step being sampled r tokens at a time: its request, its sample index, what it has so far."""
    request: int
    index: int
    tokens: list[int]
    text: str
    seed: int


def _sample_rejecting(run: Run, parents: list[Trajectory], groups: list[object], requests: list[tuple]
                      ) -> list[tuple[list[CompletionOutput], bool]]:
    """Each request's steps that ended (as CompletionOutputs, in sample order) and whether any of
    its steps was rejected, sampling r tokens at a time with rejection between chunks."""
    cfg, r = run.cfg, run.cfg.reject_every
    ended: list[dict[int, CompletionOutput]] = [{} for _ in requests]
    lost = [False] * len(requests)
    finals: dict[int, float] = {}       # group -> the best score of its steps that ended whole
    fresh: list[tuple[int, CompletionOutput]] = []     # steps that ended whole since the last scoring
    partials: list[_Partial] = []

    def settle(j: int, c: CompletionOutput) -> None:
        """c (a whole step so far) ended, or goes on as a partial."""
        if c.finish_reason != "length" or len(c.token_ids) >= requests[j][2].max_tokens:
            ended[j][c.index] = c
            if _whole(c):
                fresh.append((j, c))
        else:
            partials.append(_Partial(j, c.index, list(c.token_ids), c.text, requests[j][2].seed + c.index))

    # the first chunk: all k samples of each request at once (they share the prompt's prefill)
    first = [(problem, prompt, _chunk(params, r)) for problem, prompt, params in requests]
    for j, out in enumerate(run.generate(first) if first else []):
        for c in out.outputs:
            settle(j, c)
    chunk_no = 1
    while partials:
        # score each running step as it stands, and each step that ended whole since the last time
        running = [p for p in partials if p.text.strip()]
        scored = [Trajectory(parents[p.request].problem, [], parents[p.request].steps + [p.text])
                  for p in running]
        done = [Trajectory(parents[j].problem, [], parents[j].steps + [c.text]) for j, c in fresh]
        run.score(scored + done)
        for (j, _), t in zip(fresh, done):
            finals[id(groups[j])] = max(finals.get(id(groups[j]), -1.0), t.scores[-1])
        fresh = []
        # the frontier: the best of the group's running steps now and of its steps that ended
        best = dict(finals)
        for p, t in zip(running, scored):
            best[id(groups[p.request])] = max(best.get(id(groups[p.request]), -1.0), t.scores[-1])
        low = {id(p) for p, t in zip(running, scored)
               if t.scores[-1] < best[id(groups[p.request])] - cfg.reject_margin}
        for p in partials:
            if id(p) in low:
                lost[p.request] = True
        keep = [p for p in partials if id(p) not in low]
        # the others go on from their tokens, r more at a time, each on a seed of its own
        more = []
        for p in keep:
            problem, prompt, params = requests[p.request]
            more.append((problem, prompt + p.tokens,
                         _chunk(params, r, params.max_tokens - len(p.tokens), _reseed(p.seed, chunk_no))))
        partials = []
        for p, out in zip(keep, run.generate(more) if more else []):
            settle(p.request, _joined(run, p, out.outputs[0], requests[p.request][2]))
        chunk_no += 1
    # (a step rejected against a sibling that was then cut by the step's token limit lost to no
    # one: its parent counts as without children, so it is resampled and then closed, as always)
    whole = {id(groups[j]) for j, d in enumerate(ended) for c in d.values() if _whole(c)}
    return [([d[i] for i in sorted(d)], lost[j] and id(groups[j]) in whole) for j, d in enumerate(ended)]


def _whole(c: CompletionOutput) -> bool:
    """An ended step that can become a child: not cut by the token limit, not empty."""
    return c.finish_reason != "length" and bool(c.text.strip())


def _joined(run: Run, p: _Partial, c: CompletionOutput, params: SamplingParams) -> CompletionOutput:
    """A partial step and its next chunk as one completion. Its text is decoded whole (a character
    split between the chunks is whole again), and a step end that spans the two chunks (the
    engine saw only its halves) or that the chunk's own stop came after ends it there."""
    ids = p.tokens + list(c.token_ids)

    def decode(some: list[int]) -> str:
        return run.tokenizer.decode(some, skip_special_tokens=params.skip_special_tokens)

    text = decode(ids)
    reason, stop = c.finish_reason, c.stop_reason
    cut = text.find(STEP_END)
    if cut >= 0:
        text, reason, stop = text[:cut + len(STEP_END)], "stop", STEP_END
        # the ids up to the one that completes the step end (none after it: an EOS among them
        # would sit inside the path)
        ids = ids[:next(k for k in range(len(p.tokens), len(ids) + 1) if STEP_END in decode(ids[:k]))]
    elif stop == STEP_END:        # (cut out of the text by a tokenizer that drops it: keep it as found)
        text += STEP_END
    return CompletionOutput(p.index, text, ids, None, None, reason, stop)


def _chunk(params: SamplingParams, r: int, left: int | None = None, seed: int | None = None
           ) -> SamplingParams:
    """params for the next chunk: at most r tokens of the step's limit; a continued step is one
    sample with its own seed."""
    p = params.clone()
    p.max_tokens = min(r, params.max_tokens if left is None else left)
    if seed is not None:
        p.n, p.seed = 1, seed
    return p


def _reseed(seed: int, chunk: int) -> int:
    return (seed * 1_000_003 + chunk) % (1 << 63)


def _children(run: Run, parent: Trajectory, completions: list[CompletionOutput]) -> list[Trajectory]:
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
        elif len(parent.steps) + 1 >= run.cfg.max_steps:
            done = "max_steps"
        out.append(Trajectory(parent.problem, parent.tokens + step_tokens(run.tokenizer, c),
                              parent.steps + [c.text], list(parent.scores), done))
    return out


def step_tokens(tokenizer: Tokenizer, c: CompletionOutput) -> list[int]:
    """A step's token ids. When the stop string ended inside the last token (a vocabulary that
    merges "\\n\\n" with the text after it), those ids hold text beyond the step: the step's own
    text is encoded again instead, so that the next step starts where this one's text ends."""
    ids = list(c.token_ids)
    if isinstance(c.stop_reason, str) and tokenizer.decode(ids, skip_special_tokens=True) != c.text:
        return tokenizer.encode(c.text, add_special_tokens=False)
    return ids

"""One round of step sampling: k next steps for each parent trajectory, each parent with its own
seed, as the paper's step searches expand a beam. A step ends at "\\n\\n" (kept in its
text). Length-truncated, empty and duplicate steps are dropped; a parent left without children is
sampled again with new seeds, then closed."""
from __future__ import annotations

from tts_engine.outputs import CompletionOutput
from tts_engine.sampling_params import SamplingParams
from tts_engine.search.common import STEP_END, Run, Trajectory
from tts_engine.tokenizer import Tokenizer


def sample_steps(run: Run, parents: list[Trajectory], k: int, round_no: int, keys: list[str]
                 ) -> list[list[Trajectory]]:
    """k next steps for each parent (its seed from its key), filtered. A parent left without
    children is sampled again (cfg.resample times, with new seeds) and then closed: children []
    and done = "closed"; one whose context is full ends with done = "context"."""
    cfg = run.cfg
    children: list[list[Trajectory]] = [[] for _ in parents]
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
                                    seed=run.seed(p.problem, round_no, f"{keys[i]}/{attempt}"))
            requests.append((p.problem, prompt, params))
            owners.append(i)
        for i, out in zip(owners, run.generate(requests) if requests else []):
            children[i] = _children(run, parents[i], out.outputs)
        todo = [i for i in owners if not children[i]]
        if not todo:
            break
    for i in todo:
        parents[i].done = "closed"
    return children


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

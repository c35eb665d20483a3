"""Search strategies and aggregation, hand-checked: scripted trees (a policy that answers each path
with known steps, a PRM that scores known steps) where we know which beams are kept, which finish
and how many candidates the PRM scores; aggregation rules on hand-made score tables; and on the real
SmolLM2, a problem's beam search gives the same result alone as inside a batch of 8."""
from __future__ import annotations

import hashlib
import re

import pytest

from tts_engine.outputs import CompletionOutput, RequestOutput
from tts_engine.search import RULES, SearchConfig, beam_search, best_of_n, choose, dvts
from tts_engine.tasks import Problem, extract_answer, grade, load_dataset
from tts_engine.work import Work


# ---------------------------------------------------------------- scripted policy and PRM

class ScriptedTokenizer:
    def __init__(self, texts: dict[int, str]):
        self.texts = texts

    def encode(self, text, add_special_tokens=True):
        return [0]                       # every prompt is one token; steps carry their own ids

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.texts[i] for i in ids)


class ScriptedLLM:
    """A policy that answers the path so far (its steps' ids after the prompt) with the steps the
    script lists for it, in order, cycling to fill n; "EOS" ends a step on EOS, "LEN" marks a
    length-truncated step."""

    def __init__(self, script: dict[tuple[str, ...], list[str]]):
        self.script = script
        self.vocab: list[str] = []
        self.requests: list[tuple[tuple[str, ...], int]] = []
        self.texts: dict[int, str] = {}           # a step token's text
        self.max_model_len = 10_000

    def get_tokenizer(self):
        return ScriptedTokenizer(self.texts)

    def _id(self, step: str) -> int:
        if step not in self.vocab:
            self.vocab.append(step)
        return self.vocab.index(step) + 1

    def generate(self, prompts, sampling_params, use_tqdm=False):
        outs = []
        for prompt, p in zip(prompts, sampling_params):
            path = tuple(self.vocab[i - 1] for i in prompt["prompt_token_ids"][1:])
            self.requests.append((path, p.n))
            steps = self.script[path]
            completions = []
            for k in range(p.n):
                step = steps[k % len(steps)]
                text = step.replace("EOS", "").replace("LEN", "")
                reason = "length" if "LEN" in step else "stop"
                stop = None if "EOS" in step or reason == "length" else "\n\n"
                text += "\n\n" if stop else ""
                self.texts[self._id(step)] = text
                completions.append(CompletionOutput(k, text, [self._id(step)], 0.0, None, reason, stop))
            outs.append(RequestOutput("0", None, prompt["prompt_token_ids"], None, completions,
                                      work=Work(generated_tokens=p.n)))
        return outs

    # one step at a time (the adaptive searches): every queued request ends in the next step
    def add_request(self, prompt, sampling_params):
        self.queued = getattr(self, "queued", []) + [(prompt, sampling_params)]
        return str(len(self.requests) + len(self.queued) - 1)

    def step(self):
        queued, self.queued = getattr(self, "queued", []), []
        first = len(self.requests)
        outs = self.generate([p for p, _ in queued], [sp for _, sp in queued])
        for k, out in enumerate(outs):
            out.request_id = str(first + k)
        return outs

    def abort_request(self, request_id, indices=None):
        pass                              # (nothing is ever left running)

    def has_unfinished_requests(self):
        return bool(getattr(self, "queued", []))


class ScriptedPRM:
    """Scores each step by the number in its text (so "a1 .9" scores 0.9); counts what it scores."""

    def __init__(self):
        self.scored = 0

    def score_with_work(self, questions, trajectories):
        self.scored += len(trajectories)
        scores = [[float(re.search(r"\.\d+", s).group()) for s in steps] for steps in trajectories]
        return scores, [Work(flops=len(steps)) for steps in trajectories]


PROBLEM = [Problem("p", "What is 2 + 3?", "5")]


def test_the_policy_and_the_scorer_keep_the_contract():
    """Every member of search/contract.py's Policy and Scorer is a public member of LLM and PRM, and
    of this file's stand-ins, and takes the protocol's parameters by their names."""
    import inspect

    from tts_engine import LLM, PRM
    from tts_engine.search.contract import Policy, Scorer
    for protocol, impls in ((Policy, [LLM, ScriptedLLM({})]), (Scorer, [PRM, ScriptedPRM(), HashPRM()])):
        members = [n for n in vars(protocol) if not n.startswith("_")]
        assert {"Policy": {"max_model_len", "get_tokenizer", "generate", "add_request", "step",
                           "abort_request", "has_unfinished_requests"},
                "Scorer": {"score_with_work"}}[protocol.__name__] == set(members)
        for impl in impls:
            for name in members:
                assert hasattr(impl, name), f"{impl} has no {name}"
                want = getattr(protocol, name)
                if isinstance(want, property):
                    continue
                have = inspect.signature(getattr(impl, name)).parameters
                for param in list(inspect.signature(want).parameters)[1:]:
                    assert param in have, f"{impl}.{name} takes no {param!r}"


def test_beam_search_tree_by_hand():
    """N = 4, M = 2: B = 2 beams. Round 1 keeps a1 (.9) and a3 (.7) of 4 first steps. Round 2 chooses
    among their 4 children: b2 of a1 (.95, has the answer) finishes, a3b1 (.6) goes on; one slot is
    left. Round 3: a3b1's children c1 (.8, EOS) and c2 (.1): c1 is chosen and finishes. Done with
    2 outputs, after 4 + 4 + 2 scored candidates."""
    script = {(): ["a1 .9", "a2 .2", "a3 .7", "a4 .5"],
              ("a1 .9",): ["a1b1 .4", "a1b2 .95 \\boxed{5}"],
              ("a3 .7",): ["a3b1 .6", "a3b2 .3"],
              ("a3 .7", "a3b1 .6"): ["a3b1c1 .8 EOS", "a3b1c2 .1"]}
    llm, prm = ScriptedLLM(script), ScriptedPRM()
    (result,) = beam_search(llm, prm, PROBLEM, SearchConfig(n=4, beam_width=2, prompt_style="plain"))
    texts = [c.text for c in result.candidates]
    assert texts == ["a1 .9\n\na1b2 .95 \\boxed{5}\n\n", "a3 .7\n\na3b1 .6\n\na3b1c1 .8 "]
    assert [c.done for c in result.candidates] == ["answer", "eos"]
    assert [c.step_scores for c in result.candidates] == [[0.9, 0.95], [0.7, 0.6, 0.8]]
    assert prm.scored == 10
    # the work the policy and the scorer report, added up per problem: 10 one-token steps sampled;
    # 4 one-step, 4 two-step and 2 three-step trajectories scored (the fake's flops: steps scored)
    assert result.policy_work == Work(generated_tokens=10) and result.prm_work == Work(flops=4 + 8 + 6)
    assert llm.requests == [((), 4), (("a1 .9",), 2), (("a3 .7",), 2), (("a3 .7", "a3b1 .6"), 2)]
    assert result.answers["prm_last_max"] == "5" and result.correct["prm_last_max"]


def test_dvts_tree_by_hand():
    """N = 4, M = 2: two subtrees, each keeping 1 beam of 2 children per step; the answer is chosen
    over the two leaves."""
    script = {(): ["x .3", "y .6"],
              ("y .6",): ["y1 .2", "y2 .7"],
              ("y .6", "y2 .7"): ["y2a .5 \\boxed{5}", "y2b .4 \\boxed{6}"]}
    llm, prm = ScriptedLLM(script), ScriptedPRM()
    (result,) = dvts(llm, prm, PROBLEM, SearchConfig(n=4, beam_width=2, prompt_style="plain"))
    assert [c.steps for c in result.candidates] == [["y .6\n\n", "y2 .7\n\n", "y2a .5 \\boxed{5}\n\n"]] * 2
    assert prm.scored == 2 * (2 + 2 + 2)
    assert [n for _, n in llm.requests] == [2] * 6
    assert result.answers["majority"] == "5"


def test_dropped_candidates_resample_then_close():
    """Length-truncated, empty and duplicate steps are dropped; a beam left with no child is sampled
    again 3 times, then closed (it ends as it is)."""
    script = {(): ["a .9", "a .9", "b .8", "LEN c .7"],
              ("a .9",): ["LEN d .5", "EOS"],          # nothing valid: resampled, then closed
              ("b .8",): ["b1 .6 \\boxed{5}"]}
    llm, prm = ScriptedLLM(script), ScriptedPRM()
    (result,) = beam_search(llm, prm, PROBLEM, SearchConfig(n=4, beam_width=2, prompt_style="plain"))
    assert sorted(c.done for c in result.candidates) == ["answer", "closed"]
    assert [path for path, _ in llm.requests].count(("a .9",)) == 4      # first try + 3 resamples
    assert ("b .8",) in [path for path, _ in llm.requests]
    assert prm.scored == 2 + 1                                           # a, b; then b1


def test_best_of_n_votes_over_equivalent_answers():
    script = {(): ["one .5\n\nso \\boxed{4} .9 EOS", "two .8\n\n\\boxed{\\frac{8}{2}} .4 EOS",
                   "\\boxed{5} .95 EOS", "no answer .99 EOS"]}
    llm, prm = ScriptedLLM(script), ScriptedPRM()
    (result,) = best_of_n(llm, prm, [Problem("p", "q", "4")], SearchConfig(n=4, prompt_style="plain"))
    assert [c.answer for c in result.candidates] == ["4", "\\frac{8}{2}", "5", None]
    assert result.answers["majority"] == "4" and result.answers["prm_last_max"] == "5"
    # the "4" group: min .5 + .4, last .9 + .4, avg .7 + .6; "5": .95 for all three
    assert result.answers["prm_min_vote"] == "5" and result.answers["prm_last_vote"] == "4"
    assert result.answers["prm_avg_vote"] == "4"
    assert result.correct == {r: r in ("majority", "prm_last_vote", "prm_avg_vote") for r in RULES}


# ---------------------------------------------------------------- aggregation

def test_aggregation_rules_on_a_hand_made_table():
    table = [("3", [0.9, 0.2]),         # min .2, last .2, avg .55
             ("\\frac{6}{2}", [0.3, 0.4]),   # the same answer as "3": min .3, last .4, avg .35
             ("7", [0.6, 0.8]),         # min .6, last .8, avg .7
             (None, [1.0, 1.0]),        # no answer: never chosen
             ("7.0", [0.1, 0.1])]       # the same as "7"
    out = choose(table)
    assert out["majority"] == "3"                     # 2 against 2: the earlier group
    assert out["prm_min_max"] == "7" and out["prm_last_max"] == "7" and out["prm_avg_max"] == "7"
    assert out["prm_min_vote"] == "7"                 # .6 + .1 against .2 + .3
    assert out["prm_last_vote"] == "7"                # .8 + .1 against .2 + .4
    assert out["prm_avg_vote"] == "3"                 # .55 + .35 against .7 + .1
    assert choose([(None, [0.5])])["majority"] is None
    tie = choose([("2", [0.5]), ("3", [0.5])])
    assert tie["prm_last_max"] == "2" and tie["prm_last_vote"] == "2"


# ---------------------------------------------------------------- grading

def _plain(answer: str) -> str:
    return re.sub(r"\\left|\\right|\s|x=|\\!", "", answer).replace("dfrac", "frac")


@pytest.mark.parametrize("name", ["math500", "aime24"])
def test_grader_accepts_every_gold_answer_and_rejects_others(name, request):
    problems = load_dataset(str(request.config.rootpath.parent / "shared" / "data" / f"{name}.jsonl"))
    for i, p in enumerate(problems):
        assert grade(extract_answer(f"So the answer is $\\boxed{{{p.answer}}}$."), p.answer), p.answer
        others = problems[i + 1:] + problems[:i]
        other = next(q.answer for q in others if _plain(q.answer) != _plain(p.answer))
        assert not grade(extract_answer(f"\\boxed{{{other}}}"), p.answer), (p.answer, other)


def test_answer_extraction():
    text = "x \\boxed{\\frac{1}{2}} then \\boxed{\\sqrt{\\frac{3}{4}}}."
    assert extract_answer(text) == "\\sqrt{\\frac{3}{4}}"
    assert extract_answer("Therefore, the final answer is: $42$. I hope it is correct.") == "42"
    assert extract_answer("no answer here") is None and extract_answer("\\boxed{unclosed") is None
    assert grade("025", "25") and grade("0.5", "\\frac12") and grade("\\left( 3, \\frac{\\pi}{2} \\right)",
                                                                       "(3,\\frac{\\pi}{2})")


# ---------------------------------------------------------------- the real policy

class HashPRM:
    """A deterministic stand-in scorer over real steps: a step's score is a hash of its text."""

    def score_with_work(self, questions, trajectories):
        scores = [[int.from_bytes(hashlib.blake2b(s.encode(), digest_size=2).digest(), "little") / 65536
                   for s in steps] for steps in trajectories]
        return scores, [Work() for _ in trajectories]


def test_beam_search_result_does_not_depend_on_the_batch(smollm2):
    problems = [Problem(str(i), f"What is {i} + {2 * i}?", str(3 * i)) for i in range(1, 9)]
    cfg = SearchConfig(n=4, beam_width=2, max_steps=3, step_tokens=40, seed=11)
    alone = beam_search(smollm2, HashPRM(), problems[3:4], cfg)[0]
    batch = beam_search(smollm2, HashPRM(), problems, cfg)[3]
    assert [c.text for c in alone.candidates] == [c.text for c in batch.candidates]
    assert alone.answers == batch.answers and alone.candidates
    assert alone.policy_work.generated_tokens > 0 and alone.policy_work.cached_tokens > 0


def test_a_stop_string_inside_a_token_does_not_leak_into_the_next_step():
    """A vocabulary with a token "\\n\\nThe": the stop string "\\n\\n" ends inside it, the step's text
    stops there, and the trajectory's tokens must too (else the next step starts after "The")."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    from tts_engine.search.steps import step_tokens
    from tts_engine.tokenizer import Tokenizer
    merges = [("Ċ", "Ċ"), ("T", "h"), ("Th", "e"), ("ĊĊ", "The")]
    vocab = {c: i for i, c in enumerate("123+=ĠĊThe")}
    vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    tok = Tokenizer(hf)
    generated = tok.encode("1 + 2 = 3\n\nThe", add_special_tokens=False)
    assert tok.decode(generated[-1:]) == "\n\nThe"
    step = CompletionOutput(0, "1 + 2 = 3\n\n", generated, None, None, "stop", "\n\n")
    assert tok.decode(step_tokens(tok, step)) == "1 + 2 = 3\n\n"
    whole = CompletionOutput(0, "1 + 2 = 3\n\nThe", generated, None, None, "length", None)
    assert step_tokens(tok, whole) == generated

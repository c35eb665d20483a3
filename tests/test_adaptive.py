"""Searches that stop early, verify every g steps or reject partial steps (search/adaptive.py,
beam_search.beam_vg, steps.py): the stopping rule by hand; with the rule off, each adaptive search
gives exactly its fixed counterpart's results; with it on, a prefix of them, where the rule holds
first; beam-vg with g = 1 is beam search and its g = 2 tree is checked by hand; rejection by hand
on a policy whose tokens are characters; cancelled samples leave the engine consistent."""
from __future__ import annotations

import dataclasses
import random

import pytest

from test_search import ScriptedLLM, ScriptedPRM
from tts_engine import LLM, PRM
from tts_engine.outputs import CompletionOutput, RequestOutput
from tts_engine.search import SearchConfig, beam_search, beam_vg, best_of_n, bon_adaptive, dvts, dvts_adaptive
from tts_engine.search.adaptive import beta_confidence, settled
from tts_engine.tasks.data import Problem
from tts_engine.tasks.grading import extract_answer
from tts_engine.toy import PRM as TOY_PRM, SMALL, model_path
from tts_engine.toy.world import sample_chain
from tts_engine.work import Work


def test_beta_rule_by_hand():
    """P(X > 1/2), X ~ Beta(a+1, b+1): 1 - 2^-(a+1) when b = 0 (any real a); binomial sums
    otherwise: Beta(7, 2) -> 1 - 9/256, Beta(6, 2) -> 1 - 1/16 (Adaptive-Consistency's stops:
    4 unanimous votes, or 6 against 1)."""
    assert beta_confidence(4, 0) == pytest.approx(1 - 2 ** -5, abs=1e-9)
    assert beta_confidence(3, 0) == pytest.approx(1 - 2 ** -4, abs=1e-9)
    assert beta_confidence(2.6, 0) == pytest.approx(1 - 2 ** -3.6, abs=1e-9)
    assert beta_confidence(6, 1) == pytest.approx(1 - 9 / 256, abs=1e-9)
    assert beta_confidence(5, 1) == pytest.approx(1 - 1 / 16, abs=1e-9)
    assert beta_confidence(0, 0) == pytest.approx(0.5) and beta_confidence(0, 4) == pytest.approx(2 ** -5)
    with pytest.raises(ValueError):
        beta_confidence(-1, 0)


def test_stop_rule_on_weighted_votes_by_hand():
    # four votes for 5 scored .9 (PRM-Min): a = 3.6, P = 1 - 2^-4.6 = .959; at .8: a = 3.2, P = .946
    assert settled([("5", [0.95, 0.9])] * 4, 64, 0.95)
    assert not settled([("5", [0.8])] * 4, 64, 0.95)
    # equivalent answers are one group; no answer does not vote; a negative score weighs 0
    assert settled([("0.5", [1.0]), ("\\frac12", [1.0]), (None, [1.0]), ("7", [-1.0]), ("1/2", [1.0]),
                    ("0.5", [1.0])], 64, 0.95)
    assert not settled([("0.5", [1.0]), ("2", [1.0]), ("0.5", [1.0]), ("0.5", [1.0])], 64, 0.95)
    # the budget left cannot change the winner: 3 - 0 > 5 - 3; and the whole budget always settles
    assert settled([("5", [1.0])] * 3, 5, 0.999) and not settled([("5", [1.0])] * 3, 6, 0.999)
    assert settled([("5", [0.1]), ("6", [0.1])], 2, 0.99)
    assert not settled([("5", [1.0])] * 10, 11, None) and settled([("5", [1.0])] * 11, 11, None)


@pytest.fixture(scope="module")
def toy():
    rng = random.Random()
    chains = [sample_chain(rng, rng.randrange(1, 9), rng.choice((1, 2))) for _ in range(6)]
    problems = [Problem(f"p{i}", c.text, str(c.answer)) for i, c in enumerate(chains)]
    llm = LLM(model_path(SMALL), dtype="float32", device="cpu")
    prm = PRM(model_path(TOY_PRM), dtype="float32", device="cpu")
    cfg = SearchConfig(n=8, beam_width=2, max_steps=12, step_tokens=32, max_tokens=200,
                       prompt_style="llama3", seed=random.randrange(1 << 20), wave=3)
    return llm, prm, problems, cfg


def same(a, b) -> bool:
    return ([(c.text, c.step_scores, c.done) for c in a.candidates], a.answers, a.correct) == \
        ([(c.text, c.step_scores, c.done) for c in b.candidates], b.answers, b.correct)


def test_rule_off_gives_the_fixed_methods_results(toy):
    llm, prm, problems, cfg = toy
    off = dataclasses.replace(cfg, stop_at=None)
    for adaptive, fixed in ((bon_adaptive, best_of_n), (dvts_adaptive, dvts)):
        got, want = adaptive(llm, prm, problems, off), fixed(llm, prm, problems, cfg)
        assert all(same(g, w) for g, w in zip(got, want)), adaptive.__name__
        assert [g.used for g in got] == [cfg.n] * len(problems)
    # beam-vg with g = 1 is beam search
    got, want = beam_vg(llm, prm, problems, dataclasses.replace(cfg, verify_every=1)), \
        beam_search(llm, prm, problems, cfg)
    assert all(same(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("adaptive, fixed", [(bon_adaptive, best_of_n), (dvts_adaptive, dvts)])
def test_rule_on_stops_at_the_first_settled_prefix(toy, adaptive, fixed):
    """Each problem's candidates are the fixed method's first k, for the first k where the rule
    holds (checked again here), so its answers are those rules' over that prefix; a problem that
    stopped early generated no more tokens, and all the policy's work is some problem's (its
    cancelled samples' included, before its result goes out)."""
    llm, prm, problems, cfg = toy
    cfg = dataclasses.replace(cfg, stop_at=0.8)
    full = fixed(llm, prm, problems, cfg)
    llm.reset_stats()
    reported = {}           # what a study's row would hold: the result as on_result saw it
    got = adaptive(llm, prm, problems, cfg,
                   on_result=lambda r: reported.setdefault(r.id, (r.policy_work.flops, r.prm_work.flops)))
    assert reported == {g.id: (g.policy_work.flops, g.prm_work.flops) for g in got}   # cancelled work in
    budget = cfg.n if adaptive is bon_adaptive else cfg.n // cfg.beam_width
    stopped_early = 0
    for g, f in zip(got, full):
        k = len(g.candidates)
        cands = [(extract_answer(c.text), c.step_scores) for c in f.candidates]
        assert [(c.text, c.step_scores) for c in g.candidates] == [(c.text, c.step_scores)
                                                                     for c in f.candidates[:k]]
        assert settled(cands[:k], budget, 0.8)
        assert not any(settled(cands[:j], budget, 0.8) for j in range(k))
        # (the same samples cost the same tokens; a sample past k may have ended before the rule held)
        mine, theirs = g.policy_work.generated_tokens, f.policy_work.generated_tokens
        assert mine <= theirs if k < len(f.candidates) else mine == theirs
        assert g.used <= cfg.n
        stopped_early += k < len(f.candidates)
    assert stopped_early > 0
    assert sum(g.policy_work.flops for g in got) == llm.stats()["flops"]
    sched = llm.engine.scheduler
    assert not sched.has_work() and sched.kv_tokens_in_use == sched.cache.num_cached


PROBLEM = [Problem("p", "What is 2 + 3?", "5")]


def test_beam_vg_tree_by_hand():
    """N = 4, M = 2, g = 2: B = 2 beams. The first step is beam search's (a1 .9, a3 .7 kept of 4).
    Then each is extended one step, unscored (a1 -> x1, a3 -> y1), and only then gets 2 children
    (x1 -> c1, c2; y1 -> d1 with the answer, d2); the PRM scores each child's two new steps, and
    the top 2 by last score are kept: d1 (.95, done) and c1 (.8), whose extension y (x2) ends its
    path by EOS before it is scored. 4 + 2 + 4 + 1 steps sampled against beam search's 4 + 4 + 4."""
    script = {(): ["a1 .9", "a2 .2", "a3 .7", "a4 .5"],
              ("a1 .9",): ["x1 .5"], ("a3 .7",): ["y1 .4"],
              ("a1 .9", "x1 .5"): ["c1 .8", "c2 .3"], ("a3 .7", "y1 .4"): ["d1 .95 \\boxed{5}", "d2 .1"],
              ("a1 .9", "x1 .5", "c1 .8"): ["x2 .6 EOS"]}
    llm, prm = ScriptedLLM(script), ScriptedPRM()
    (result,) = beam_vg(llm, prm, PROBLEM, SearchConfig(n=4, beam_width=2, prompt_style="plain",
                                                        verify_every=2))
    assert [c.text for c in result.candidates] == ["a3 .7\n\ny1 .4\n\nd1 .95 \\boxed{5}\n\n",
                                                   "a1 .9\n\nx1 .5\n\nc1 .8\n\nx2 .6 "]
    assert [c.step_scores for c in result.candidates] == [[0.7, 0.4, 0.95], [0.9, 0.5, 0.8, 0.6]]
    assert [c.done for c in result.candidates] == ["answer", "eos"]
    assert llm.requests == [((), 4), (("a1 .9",), 1), (("a3 .7",), 1), (("a1 .9", "x1 .5"), 2),
                            (("a3 .7", "y1 .4"), 2), (("a1 .9", "x1 .5", "c1 .8"), 1)]


class CharLLM:
    """A policy whose tokens are characters: each path (its steps so far) has its next steps,
    one per sample; a request continues the step its prompt's tail starts, honouring max_tokens
    and the stop string, so a step can be sampled a few characters at a time."""

    def __init__(self, script: dict[tuple[str, ...], list[str]]):
        self.script, self.max_model_len, self.generated = script, 10_000, 0

    def get_tokenizer(self):
        class Chars:
            def encode(self, text, add_special_tokens=True):
                return [ord(ch) for ch in text]

            def decode(self, ids, skip_special_tokens=False):
                return "".join(chr(i) for i in ids)
        return Chars()

    def generate(self, prompts, sampling_params, use_tqdm=False):
        outs = []
        for prompt, p in zip(prompts, sampling_params):
            text = "".join(chr(i) for i in prompt["prompt_token_ids"])[len("Q"):]
            done = text.split("\n\n")
            path, partial = tuple(s + "\n\n" for s in done[:-1]), done[-1]
            completions = []
            for k in range(p.n):
                steps = [s for s in self.script[path] if (s + "\n\n").startswith(partial)]
                full = steps[(p.seed + k) % len(steps) if partial == "" else 0] + "\n\n"
                rest = full[len(partial):][:p.max_tokens]
                ended = rest.endswith("\n\n")
                self.generated += len(rest)
                completions.append(CompletionOutput(k, rest, [ord(ch) for ch in rest], 0.0, None,
                                                    "stop" if ended else "length", "\n\n" if ended else None))
            outs.append(RequestOutput("0", None, prompt["prompt_token_ids"], None, completions,
                                      work=Work(generated_tokens=sum(len(c.text) for c in completions))))
        return outs


class LetterPRM:
    """Scores a step by its first letter (g: .9, o: .6, b: .1), finished or not."""

    def score_with_work(self, questions, trajectories):
        table = {"g": 0.9, "o": 0.6, "b": 0.1}
        return [[table[s[0]] for s in steps] for steps in trajectories], [Work() for _ in trajectories]


def test_partial_steps_far_below_their_group_are_rejected_by_hand(monkeypatch):
    """DVTS with one subtree of M = 3 children, rejection every 4 characters, margin .2: after the
    first 4 characters "good..." scores .9, "okay..." .6 and "bad ..." .1; the last two are more
    than .2 below .9 and are rejected; "good" alone is sampled to its end. Without rejection all
    three steps are whole and the selection picks "good" too."""
    import tts_engine.search.common as common
    monkeypatch.setattr(common, "prompt_ids", lambda tok, text, style: [ord("Q")])
    script = {(): ["good step one", "okay step two", "bad step three"],
              ("good step one\n\n",): ["g done \\boxed{5}"]}
    cfg = SearchConfig(n=3, beam_width=3, prompt_style="plain", reject_every=4, reject_margin=0.2, seed=0)
    llm = CharLLM(script)
    (result,) = dvts(llm, LetterPRM(), PROBLEM, cfg)
    assert [c.text for c in result.candidates] == ["good step one\n\ng done \\boxed{5}\n\n"]
    with_rejection = llm.generated
    # "good step one\n\n" (15) + "g done \boxed{5}\n\n" sampled 3 times at most, 4 chars each for the others
    llm = CharLLM(script)
    (plain,) = dvts(llm, LetterPRM(), PROBLEM, dataclasses.replace(cfg, reject_every=0))
    assert [c.text for c in plain.candidates] == [c.text for c in result.candidates]
    assert with_rejection == llm.generated - len("okay step two\n\n") - len("bad step three\n\n") + 8


def test_the_study_runs_and_reports_the_searches_beyond_the_paper(tmp_path, capsys):
    """The toy study with every search on a few problems: a row per problem and method, the
    adaptive ones spending at most N (mean budget used per bin in the summary and the table),
    rejection and g in the manifest; bad values of the new options exit 2 before any work."""
    import json

    from tts_engine.run import main
    from tts_engine.study.report import table
    methods = ["cot", "bon", "bon-adaptive", "dvts", "dvts-adaptive", "beam", "beam-vg"]
    common = ["--limit", "10", "--n", "8", "--difficulty-samples", "4", "--method", *methods]
    assert main(["--out", str(tmp_path), *common, "--reject-every", "4", "--stop-at", "0.8"]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert sorted({r["method"] for r in rows}) == sorted(methods)
    assert all(len([r for r in rows if r["method"] == m and r["policy"] == SMALL]) == 10 for m in methods)
    for r in rows:
        assert 0 < r["used"] <= r["n"] and (r["used"] == r["n"] or r["method"].endswith("adaptive"))
    # a row's seconds are its share of its unit's wall time, whenever its own result came out
    assert all(len({r["seconds"] for r in rows if r["unit"] == u}) == 1 for u in {r["unit"] for r in rows})
    summary = json.load(open(tmp_path / "summary.json"))
    adaptive = [s for s in summary["rows"] if s["method"] == "bon-adaptive" and s["aggregation"] == "majority"
                and s["difficulty"] == "all"]
    mine = [r for r in rows if r["method"] == "bon-adaptive"]
    assert adaptive[0]["used_per_problem"] == pytest.approx(sum(r["used"] for r in mine) / len(mine))
    assert table(summary["rows"]) in capsys.readouterr().out
    settings = json.load(open(tmp_path / "manifest.json"))["settings"]
    assert (settings["reject_every"], settings["stop_at"], settings["verify_every"]) == (4, 0.8, 2)
    for bad, message in ((["--stop-at", "1.5"], "--stop-at must be in (0, 1]"),
                         (["--verify-every", "0"], "--verify-every must be >= 1"),
                         (["--reject-every", "-1"], "--reject-every must be >= 0"),
                         (["--wave", "0"], "--wave must be >= 1")):
        assert main(["--out", str(tmp_path / "bad"), *common, *bad]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad" / "results.jsonl").exists()


class LastLetterPRM:
    """Scores a step by its last letter of g (.9), o (.6), m (.5), finished or not."""

    def score_with_work(self, questions, trajectories):
        table = {"g": 0.9, "o": 0.6, "m": 0.5}
        last = lambda text: next(table[ch] for ch in reversed(text) if ch in table)   # noqa: E731
        return [[last(s) for s in steps] for steps in trajectories], [Work() for _ in trajectories]


def test_rejection_measures_against_the_frontier_now_and_joins_a_split_step_end(monkeypatch):
    """Margin .31, 4 characters a chunk. Chunk 1: "gggg" .9, "oooo" .6 (kept: .6 >= .59). Chunk 2:
    "ggggmmm\n" and "oooommmm" both .5: the frontier is now .5 (chunk 1's .9 would reject both and
    leave the subtree empty), so both go on. Chunk 3 ends both; the first step's "\n\n" spans
    chunks 2 and 3, which the policy sees as two halves, and it still ends the step there. DVTS
    keeps "oooommmmo" (.6 against .5)."""
    import tts_engine.search.common as common
    monkeypatch.setattr(common, "prompt_ids", lambda tok, text, style: [ord("Q")])
    script = {(): ["ggggmmm", "oooommmmo"], ("oooommmmo\n\n",): ["o done \\boxed{5}"],
              ("ggggmmm\n\n",): ["g done \\boxed{6}"]}
    cfg = SearchConfig(n=2, beam_width=2, prompt_style="plain", reject_every=4, reject_margin=0.31, seed=0)
    llm = CharLLM(script)
    (result,) = dvts(llm, LastLetterPRM(), PROBLEM, cfg)
    assert [c.text for c in result.candidates] == ["oooommmmo\n\no done \\boxed{5}\n\n"]
    assert result.candidates[0].step_scores == [0.6, 0.6]
    # both first steps were sampled whole: 9 + 11 characters, then the second step
    assert llm.generated == len("ggggmmm\n\n") + len("oooommmmo\n\n") + 2 * len("o done \\boxed{5}\n\n")


def test_stop_rule_off_on_the_command_line_and_folders_from_before_the_new_options():
    """--stop-at off is the rule off; a folder whose manifest predates the new options holds them at
    the values its rows were made with (LEGACY), so it resumes with those and refuses others."""
    from tts_engine.study.args import parse_args
    from tts_engine.study.manifest import LEGACY, Manifest, differences
    assert parse_args(["--stop-at", "off"]).stop_at is None and parse_args([]).stop_at == LEGACY["stop_at"]
    dataset = {"hash": "h", "source": "s", "problems": 1}
    old = Manifest("0.1.0", {"seed": 0}, dataset)
    assert differences(old, Manifest("0.1.0", {"seed": 0, **LEGACY}, dataset)) == []
    assert differences(old, Manifest("0.1.0", {"seed": 0, **LEGACY, "stop_at": 0.9}, dataset)) == \
        [f"--stop-at {LEGACY['stop_at']} -> 0.9"]


def test_a_step_end_split_between_chunks_ends_the_step_without_what_followed():
    """A partial step ending in "\\n" whose next chunk is "\\n" and then EOS: the joined step ends at
    "\\n\\n" (stop), and its ids stop there too (an EOS inside the path would be fed back)."""
    from types import SimpleNamespace

    from tts_engine.sampling_params import SamplingParams
    from tts_engine.search.steps import STEP_END, _joined, _Partial
    tok = LLM(model_path(SMALL), dtype="float32", device="cpu").get_tokenizer()
    head = tok.encode("12 + 3 = 15\n", add_special_tokens=False)
    tail = tok.encode("\n", add_special_tokens=False) + [tok.eos_token_id]
    partial = _Partial(0, 0, head, tok.decode(head, skip_special_tokens=True), 7)
    c = CompletionOutput(0, "\n", tail, None, None, "stop", None)
    joined = _joined(SimpleNamespace(tokenizer=tok), partial, c, SamplingParams())
    assert (joined.text, joined.finish_reason, joined.stop_reason) == ("12 + 3 = 15\n\n", "stop", STEP_END)
    assert joined.token_ids == head + tail[:-1]

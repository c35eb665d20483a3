"""The toy world: its checker on hand-made solutions, its tokenizer, the shipped models against
transformers, the PRM's separation of correct and incorrect steps, training's reproducibility, and
the headline of the study on a slice of the default run."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file

from tts_engine import LLM, PRM, SamplingParams
from tts_engine.tasks import grade, load_dataset
from tts_engine.toy import LARGE, PRM as TOY_PRM, SMALL, model_path
from tts_engine.toy.train import auroc, excluded, held_out, prompt_text, sample_solutions
from tts_engine.toy.world import (MAX_DIGITS, MAX_OPS, Chain, check, parse, problem_set, sample_chain,
                                  split_steps, study_problems, write_jsonl)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_docstring_example_by_hand():
    chain = parse("Compute 47 + 38 - 19 + 26.")
    assert chain == Chain((47, 38, 19, 26), ("+", "-", "+"))
    assert chain.values == [47, 85, 66, 92] and chain.answer == 92
    assert "".join(chain.steps) == ("47 + 38 = 85\n\n85 - 19 = 66\n\n66 + 26 = 92\n\n"
                                    "The answer is \\boxed{92}.")
    assert check(chain.text, chain.steps) == [True] * 4
    # a wrong sum, and everything after it, is wrong even when later arithmetic is right
    assert check(chain.text, ["47 + 38 = 75", "75 - 19 = 56", "56 + 26 = 82", "The answer is \\boxed{82}."]) \
        == [False] * 4
    # the right result from the wrong operand; a skipped operation; a wrong final answer; extra text
    assert check(chain.text, ["47 + 39 = 85"]) == [False]
    assert check(chain.text, ["47 + 38 = 85", "85 + 26 = 111"]) == [True, False]
    assert check(chain.text, chain.steps[:3] + ["The answer is \\boxed{93}."]) == [True] * 3 + [False]
    assert check(chain.text, chain.steps + ["Done."]) == [True] * 4 + [False]
    assert check(chain.text, split_steps("".join(chain.steps))) == [True] * 4
    # a step's own correctness: right given the steps before it as written
    wrong_sum = ["47 + 38 = 75", "75 - 19 = 56", "56 + 26 = 82", "The answer is \\boxed{82}."]
    assert check(chain.text, wrong_sum, prefix=False) == [False, True, True, True]
    assert check(chain.text, ["47 + 38 = 85", "85 + 26 = 111"], prefix=False) == [True, False]
    early = chain.steps[:3] + ["The answer is \\boxed{93}."]
    assert check(chain.text, early, prefix=False) == [True] * 3 + [False]


def test_random_chains_check_and_stay_in_range():
    rng = random.Random(os.environ.get("TTS_TEST_SEED"))
    for _ in range(200):
        chain = sample_chain(rng, rng.randint(1, MAX_OPS), rng.randint(1, MAX_DIGITS))
        assert parse(chain.text) == chain and all(0 <= v <= 99 for v in chain.values)
        assert all(check(chain.text, chain.steps))
        k = rng.randrange(len(chain.ops))
        bad = list(chain.steps)
        bad[k] = bad[k].replace(f"= {chain.values[k + 1]}", f"= {chain.values[k + 1] + rng.randint(1, 9)}")
        assert check(chain.text, bad) == [True] * k + [False] * (len(bad) - k)


def test_study_set_spans_every_difficulty_and_loads_as_a_dataset(tmp_path):
    chains = study_problems()
    cells = {(len(c.ops), c.digits) for c in chains}
    assert cells == {(o, d) for o in range(1, MAX_OPS + 1) for d in range(1, MAX_DIGITS + 1)}
    assert len({c.text for c in chains}) == len(chains)
    # training never draws a study or held-out problem
    assert {c.text for c in chains} | {c.text for c in held_out()} <= excluded()
    write_jsonl(tmp_path / "p.jsonl", chains)
    problems = load_dataset(str(tmp_path / "p.jsonl"))
    assert [p.problem for p in problems] == [c.text for c in chains]
    assert all(grade(f"{c.answer}", p.answer) for c, p in zip(chains, problems))
    assert problem_set(20, 7) == problem_set(20, 7)


def test_tokenizer_digits_template_and_transformers_agree():
    folder = model_path(SMALL)
    ours = LLM(folder, dtype="float32", device="cpu").get_tokenizer()
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    text = "".join(study_problems()[100].steps)
    ids = ours.encode(text, add_special_tokens=False)
    assert ids == theirs.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == text
    assert all(len(ours.decode([i]).strip("0123456789")) > 0 or len(ours.decode([i])) == 1 for i in ids)
    chat = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Compute 1 + 2."}]
    rendered = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == prompt_text("Compute 1 + 2.")


@pytest.mark.parametrize("name", [SMALL, LARGE])
def test_policies_match_transformers(name):
    """Greedy solutions of our engine equal transformers' greedy generate on the shipped weights.
    (Token ids come from tokenizer.json through `tokenizers`: transformers 5 swaps in its own Qwen2
    pre-tokenizer for a qwen2 folder, whatever tokenizer.json says.)"""
    folder = model_path(name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = LLM(folder, dtype="float32", device="cpu")
    tok = llm.get_tokenizer()
    problems = [c.text for c in random.Random(os.environ.get("TTS_TEST_SEED")).sample(study_problems(), 4)]
    outs = llm.generate([prompt_text(p) for p in problems], SamplingParams(temperature=0, max_tokens=150),
                        use_tqdm=False)
    for p, out in zip(problems, outs):
        ids = tok.encode(prompt_text(p), add_special_tokens=False)
        ref = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=150,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        ref = ref[0, len(ids):].tolist()
        if ref and ref[-1] == tok.eos_token_id:
            ref = ref[:-1]
        assert list(out.outputs[0].token_ids)[:len(ref)] == ref


def test_prm_matches_transformers_and_separates_steps():
    folder = model_path(TOY_PRM)
    assert json.load(open(os.path.join(folder, "config.json")))["architectures"] == ["Qwen2ForPrmModel"]
    prm = PRM(folder, dtype="float32", device="cpu")
    assert prm.family.name == "skywork"
    chain = next(c for c in study_problems()[200:] if len(c.ops) >= 3)
    steps = [s.strip() for s in chain.steps]
    steps[1] = steps[1][:-1] + str((int(steps[1][-1]) + 3) % 10)          # a wrong result in step 2
    ours = prm.score(chain.text, [steps])[0]
    # transformers: the backbone, the value head by hand, Skywork's input as its card writes it
    # (ids from tokenizer.json through `tokenizers`, as in test_policies_match_transformers)
    tok = prm.family.tok
    backbone = transformers.Qwen2Model.from_pretrained(folder, dtype=torch.float32).eval()
    head = load_file(os.path.join(folder, "model.safetensors"))
    ids, flags = tok.encode(tok.bos_token + chain.text + "\n", add_special_tokens=False), []
    for s in steps:
        ids += tok.encode(s, add_special_tokens=False) + [tok.convert_tokens_to_ids("Ċ")]
        flags.append(len(ids) - 1)
    with torch.no_grad():
        hidden = backbone(torch.tensor([ids])).last_hidden_state[0, flags]
    ref = torch.sigmoid(hidden @ head["v_head.summary.weight"].T + head["v_head.summary.bias"])[:, 0]
    torch.testing.assert_close(torch.tensor(ours), ref, atol=1e-4, rtol=0)
    # held-out samples of the small policy, labelled by the checker
    data = sample_solutions(model_path(SMALL), held_out()[:48], 4, seed=11)
    scores = prm.score([q for q, _ in data], [s for _, s in data])
    flat = [(s, y) for (q, steps), sc in zip(data, scores)
            for s, y in zip(sc, check(q, steps, prefix=False))]
    assert 0 < sum(y for _, y in flat) < len(flat)
    # it separates correct from incorrect steps (0.94 on the full held-out set, RESULTS.md)
    assert auroc([s for s, _ in flat], [y for _, y in flat]) > 0.9


def test_auroc_by_hand():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auroc([0.5, 0.5], [True, False]) == 0.5


def test_shipped_models_record_their_training():
    sizes = {}
    for name in (SMALL, LARGE, TOY_PRM):
        info = json.load(open(os.path.join(model_path(name), "training.json")))
        assert info["training_tokens"] > 0 and info["parameters"] > 0
        sizes[name] = info["parameters"]
    assert sizes[LARGE] >= 6 * sizes[SMALL]
    total = sum(os.path.getsize(os.path.join(model_path(n), f)) for n in (SMALL, LARGE, TOY_PRM)
                for f in os.listdir(model_path(n)))
    assert total < 20 * 2 ** 20


def test_training_is_reproducible(tmp_path):
    """The documented command, at a tiny scale, twice with one seed: the same weights, bit for bit."""
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-m", "tts_engine.toy.train", "--out", str(tmp_path / run), "--stage",
                        SMALL, "--scale", "0.01", "--seed", "3"], check=True, cwd=ROOT, capture_output=True)
    a, b = (load_file(str(tmp_path / run / SMALL / "model.safetensors")) for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_policy_training_stops_at_its_validation_target(tmp_path, monkeypatch):
    """A policy trains until its averaged weights reach the target on the validation problems,
    checked from `check_from` on; unreached, it stops at its budget; either way training.json says
    where, and the saved weights are the checked ones."""
    from tts_engine.toy import train
    monkeypatch.setattr(train, "validation", lambda: problem_set(8, train.VALIDATION_SEED))
    real = train.greedy_accuracy
    monkeypatch.setattr(train, "greedy_accuracy", lambda folder, chains=None: real(folder, chains or
                                                                                    study_problems()[:8]))
    tiny = dict(arch="llama", hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32, lr=1e-3,
                batch=4, check_from=2, check_every=2, check_near=1)
    for target, stops in ((0.0, 2), (1.01, 6)):
        monkeypatch.setitem(train.SPECS, SMALL, train.PolicySpec(target=target, max_steps=6, **tiny))
        train.train_policy(SMALL, str(tmp_path / str(target)), seed=3)
        info = json.load(open(tmp_path / str(target) / SMALL / "training.json"))
        assert info["steps"] == stops
        assert [step for step, _ in info["validation_accuracy"]] == list(range(2, stops + 1, 2))
        # the last check's weights are the ones saved
        saved = train.accuracy(real(str(tmp_path / str(target) / SMALL), train.validation()))
        assert saved == info["validation_accuracy"][-1][1]


@pytest.fixture(scope="module")
def toy_slice(tmp_path_factory):
    """The default study (no model arguments) on its first 192 problems, N = 4 and 16, the paper's
    methods (on fewer problems the headline's margin is within a few problems' noise; the searches
    beyond the paper have their own study test in test_adaptive.py)."""
    from tts_engine.run import main
    out = tmp_path_factory.mktemp("toy_study")
    assert main(["--out", str(out), "--limit", "192", "--n", "4", "16", "--difficulty-samples", "8",
                 "--method", "cot", "bon", "beam", "dvts", "compute-optimal"]) == 0
    summary = json.load(open(out / "summary.json"))
    rows = [s for s in summary["rows"] if s["difficulty"] == "all"]
    cot = {s["policy"]: s for s in rows if s["method"] == "cot"}
    search = [s for s in rows if s["policy"] == SMALL and s["method"] in ("bon", "beam", "dvts")]
    return out, summary, cot, search


def test_slice_large_cot_beats_small_cot_at_more_total_flops(toy_slice):
    out, summary, cot, search = toy_slice
    small, large = cot[SMALL], cot[LARGE]
    assert small["problems"] == large["problems"] == 192
    assert large["accuracy"] > small["accuracy"]
    # total FLOPs as the paper's Table 4 counts them: the policy's pre-training plus inference
    assert all(s["flops_total_with_prm"] > s["flops_total"] > s["flops_inference"] for s in search)
    assert all(s["flops_total"] < large["flops_total"] for s in search)


def test_slice_prm_guided_search_beats_the_large_cot(toy_slice):
    """The paper's headline: the small policy with a PRM-guided search (a PRM rule, or beam/DVTS)
    beats the large policy's CoT at fewer total FLOPs, and its best accuracy rises with N."""
    _, _, cot, search = toy_slice
    guided = [s for s in search if s["aggregation"] != "majority"]
    large = cot[LARGE]
    assert any(s["accuracy"] > large["accuracy"] and s["flops_total"] < large["flops_total"] for s in guided)
    best = {n: max(s["accuracy"] for s in guided if s["n"] == n) for n in (4, 16)}
    assert best[16] > best[4]


def test_slice_compute_optimal_reports_the_held_out_half_by_its_estimated_bins(toy_slice):
    """Each choice is a searched method and rule; at each N, compute-optimal reports exactly the
    held-out problems whose estimated bin (the PRM's mean score) has a choice at that N."""
    from tts_engine.study.analysis import bin_of, calibration
    out, summary, _, search = toy_slice
    choices = {(c["bin"], c["n"]): (c["method"], c["aggregation"]) for c in summary["compute_optimal"]}
    assert choices and set(choices.values()) <= {(s["method"], s["aggregation"]) for s in search}
    estimated = {d["id"]: bin_of(d["prm_mean"]) for d in map(json.loads, open(out / "difficulty.jsonl"))
                 if d["policy"] == SMALL}
    for n in (4, 16):
        held = [i for i, b in estimated.items() if not calibration(i) and (b, n) in choices]
        reported = [s for s in summary["rows"] if s["method"] == "compute-optimal" and s["n"] == n
                    and s["difficulty"] == "all"]
        assert [s["problems"] for s in reported] == [len(held)] and held


def test_estimated_difficulty_is_the_mean_prm_min_score():
    """Without gold answers a problem's bin comes from the PRM: the mean over the policy's samples
    of each sample's lowest step score (its last step, a copied answer, scores high either way)."""
    from tts_engine.search.common import SearchConfig
    from tts_engine.search.difficulty import estimate
    from tts_engine.tasks.data import Problem
    chains = [sample_chain(random.Random(5), 1, 1), sample_chain(random.Random(6), 8, 2)]
    problems = [Problem(f"p{i}", c.text, str(c.answer)) for i, c in enumerate(chains)]
    llm = LLM(model_path(SMALL), dtype="float32", device="cpu")
    prm = PRM(model_path(TOY_PRM), dtype="float32", device="cpu")
    seen = []
    found = estimate(llm, prm, problems, SearchConfig(max_tokens=200, prompt_style="llama3"), samples=8,
                     on_result=lambda d, result: seen.append((d, result)))
    assert sorted(d.id for d in found) == ["p0", "p1"]
    for d, result in seen:
        chain = chains[int(d.id[1:])]
        mins = [min(c.step_scores) for c in result.candidates]
        assert d.prm_mean == pytest.approx(sum(mins) / len(mins))
        right = [all(check(chain.text, c.steps)) and len(c.steps) == len(chain.steps)
                 for c in result.candidates]
        assert d.pass1 == sum(right) / len(right)
        # the last steps alone would say "easy" whatever the samples are
        assert sum(c.step_scores[-1] for c in result.candidates) / len(mins) >= d.prm_mean

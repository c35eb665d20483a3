"""Process reward models: each family's input format and head against a reference written with
transformers from its model card, on tiny random backbones saved in each family's checkpoint layout;
incremental scoring; family detection; loading that runs no checkpoint code; bad inputs."""
from __future__ import annotations

import json
import random

import pytest
import safetensors.torch
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, pre_tokenizers

from conftest import save_tiny_model
from tts_engine import PRM
from tts_engine.tokenizer import _QWEN2_SPLIT

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
                   "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
                   "{% endfor %}{% if add_generation_prompt %}"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

STEPS = ["First add 2 and 3.\nThat gives 5.", "Now π ≈ 3.14, über alles ✓", "Multiply: $5 \\times 2 = 10$.",
         "So the total is $\\boxed{10}$.", "Check: 10 / 2 = 5 (naïve check)."]


def add_tokens(folder, special=(), normal=(), **config):
    tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    tok.add_tokens([AddedToken(t, normalized=False) for t in normal])
    tok.save(str(folder / "tokenizer.json"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, **config}))


def rewrite(folder, architecture, drop=(), add=None, **config):
    weights = safetensors.torch.load_file(str(folder / "model.safetensors"))
    for name in drop:
        del weights[name]
    safetensors.torch.save_file({**weights, **(add or {})}, str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": [architecture], **config}))


def make_family(kind: str, folder):
    """A tiny random checkpoint in the family's layout; returns (folder, head tensors)."""
    seed = random.randrange(1000)
    if kind == "math-shepherd":
        save_tiny_model(str(folder), "mistral", seed=seed)
        add_tokens(folder, normal=["ки"])
        return folder, {}
    if kind == "rlhflow":
        save_tiny_model(str(folder), "llama", seed=seed)
        add_tokens(folder, special=["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                    "<|eot_id|>", "<|reserved_special_token_0|>"],
                   bos_token="<|begin_of_text|>", chat_template=LLAMA3_TEMPLATE)
        return folder, {}
    hf = save_tiny_model(str(folder), "qwen2", seed=seed)
    # transformers 5 builds Qwen2's own pre-tokenizer (digits one by one) whatever tokenizer.json
    # says; real Qwen checkpoints ship that same one in the file, so give the test tokenizer it too
    tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.save(str(folder / "tokenizer.json"))
    h = hf.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    if kind == "skywork":   # Skywork keeps the causal LM's lm_head beside its value head
        head = {"v_head.summary.weight": torch.randn(1, h, generator=g),
                "v_head.summary.bias": torch.randn(1, generator=g)}
        rewrite(folder, "Qwen2ForPrmModel", add=head)
        return folder, head
    head = {"score.0.weight": torch.randn(h, h, generator=g) / h ** 0.5,
            "score.0.bias": torch.randn(h, generator=g),
            "score.2.weight": torch.randn(2, h, generator=g), "score.2.bias": torch.randn(2, generator=g)}
    rewrite(folder, "Qwen2ForProcessRewardModel", drop=["lm_head.weight"], add=head, num_labels=2)
    add_tokens(folder, special=["<extra_0>", "<|im_start|>", "<|im_end|>"], chat_template=QWEN_TEMPLATE)
    return folder, head


def causal_lm(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def last_token(tok, text: str) -> int:
    return tok.encode(text, add_special_tokens=False)[-1]


@torch.no_grad()
def reference(kind: str, folder, head, question: str, steps: list[str]) -> list[float]:
    """Each family's model-card recipe in transformers: the whole text through the model, the head
    read at the step tags."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    steps = [s.strip() for s in steps]
    if kind == "math-shepherd":
        ids = tok.encode(question + " " + "".join(s + " ки\n" for s in steps))
        logits = causal_lm(folder)(torch.tensor([ids])).logits[0]
        # the card's candidate ids encode("+ -")[1:] are the "+" and "-" tokens (after Mistral's BOS)
        plus, minus = last_token(tok, "+"), last_token(tok, "-")
        at = torch.tensor(ids) == tok.encode("ки", add_special_tokens=False)[-1]
        return torch.softmax(logits[at][:, [plus, minus]], -1)[:, 0].tolist()
    if kind == "rlhflow":
        chat = []
        for i, s in enumerate(steps):
            chat += [{"role": "user", "content": question + " " + s if i == 0 else s},
                     {"role": "assistant", "content": "<|reserved_special_token_0|>"}]
        ids = tok.apply_chat_template(chat, tokenize=True, return_dict=False)
        placeholder = tok.convert_tokens_to_ids("<|reserved_special_token_0|>")
        plus, minus = last_token(tok, "+"), last_token(tok, "-")
        where = [i for i, t in enumerate(ids) if t == placeholder]
        ids = [plus if t == placeholder else t for t in ids]
        logits = causal_lm(folder)(torch.tensor([ids])).logits[0]
        return torch.softmax(logits[[i - 1 for i in where]][:, [plus, minus]], -1)[:, 0].tolist()
    backbone = transformers.Qwen2Model.from_pretrained(str(folder)).eval()
    if kind == "skywork":    # the official prepare_input: each step encoded on its own, then "\n"
        ids = tok.encode(tok.bos_token + question + "\n")
        flags = []
        newline = tok.encode("\n")[-1]
        for s in steps:
            ids += tok.encode(s.replace("\n", " ")) + [newline]
            flags.append(len(ids) - 1)
        hidden = backbone(torch.tensor([ids])).last_hidden_state[0, flags]
        value = hidden @ head["v_head.summary.weight"].T + head["v_head.summary.bias"]
        return torch.sigmoid(value)[:, 0].tolist()
    chat = [{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": question},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    ids = tok.encode(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=False))
    at = torch.tensor(ids) == tok.encode("<extra_0>")[0]
    hidden = backbone(torch.tensor([ids])).last_hidden_state[0][at]
    mid = torch.relu(hidden @ head["score.0.weight"].T + head["score.0.bias"])
    return torch.softmax(mid @ head["score.2.weight"].T + head["score.2.bias"], -1)[:, 1].tolist()


KINDS = ["math-shepherd", "rlhflow", "skywork", "qwen2.5-math-prm"]


@pytest.fixture(scope="module", params=KINDS)
def family(request, tmp_path_factory):
    folder, head = make_family(request.param, tmp_path_factory.mktemp(request.param.replace(".", "")))
    return request.param, folder, head


def test_scores_match_the_model_card(family):
    kind, folder, head = family
    prm = PRM(str(folder), dtype="float32", device="cpu", kv_cache_tokens=8192)
    assert prm.kind == kind           # auto detection
    question = "What is (2 + 3) * 2? Explain."
    trajectories = [STEPS[:n] for n in range(1, 6)] + [["  " + STEPS[2] + "\n\n", STEPS[0]]]
    scores = prm.score(question, trajectories)
    for steps, got in zip(trajectories, scores):
        expected = reference(kind, folder, head, question, steps)
        assert len(got) == len(steps) and all(0 <= s <= 1 for s in got)
        assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-4, (kind, got, expected)


def test_step_by_step_scoring_computes_only_the_new_steps(family):
    kind, folder, _ = family
    rng = random.Random(random.randrange(1 << 30))
    steps = [f"Step {i}: {rng.randint(10, 99)} + {rng.randint(10, 99)} = {rng.randint(10, 200)}"
             for i in range(10)]
    question = "Add the numbers, one step at a time."
    fresh = PRM(str(folder), dtype="float32", device="cpu", kv_cache_tokens=8192)
    at_once = fresh.score(question, [steps])[0]
    prm = PRM(str(folder), dtype="float32", device="cpu", kv_cache_tokens=8192)
    cache, hints = prm.engine.scheduler.cache, []
    match = cache.match_prefix
    with pytest.MonkeyPatch.context() as m:    # (the hints each round's admission gets)
        m.setattr(cache, "match_prefix", lambda tokens, limit=None, after=None: (
            hints.append(after is not None and after.node.parent is not None and
                         tokens[:after.node.depth] == after.tokens[:after.node.depth]),
            match(tokens, limit, after))[1])
        walked = [prm.score(question, [steps[:k]])[0] for k in range(1, 11)]
    # where a trajectory is written from the one before, its admission starts from where that one
    # ended in the tree (a valid hint, every round after the first)
    assert hints == [False] + [prm.family.extendable] * 9
    # (a score cache of 2 tags: the earlier tags' scores come with the trajectory it extends; and
    # only the newest written trajectory kept)
    forgetful = PRM(str(folder), dtype="float32", device="cpu", kv_cache_tokens=8192, score_cache_size=2)
    with pytest.MonkeyPatch.context() as m:
        m.setattr("tts_engine.prm.WRITTEN_TOKENS", 1)
        walked_forgetting = [forgetful.score(question, [steps[:k]])[0] for k in range(1, 11)]
        assert len(forgetful._written) == int(forgetful.family.extendable)   # (the others keep none)
    for k, (scores, again) in enumerate(zip(walked, walked_forgetting), start=1):
        assert len(scores) == len(again) == k
        assert max(abs(a - b) for a, b in zip(scores, at_once[:k])) < 1e-5
        assert max(abs(a - b) for a, b in zip(again, at_once[:k])) < 1e-5
    length = prm.family.encode(question, steps)[1][-1] + 1          # tokens up to the last tag
    # each round wrote only its new step onto the last (Family.extend, where the family can):
    # the same tokens, tags and digests as writing the whole trajectory
    from tts_engine.prm import _digests
    w = prm._write(question, steps)
    whole = prm.family.encode(question, steps)
    assert (w.ids, w.positions, w.digests) == (*whole, _digests(*whole)[0])
    st = prm.stats()
    assert st["computed_prompt_tokens"] <= 1.2 * length, (st, length)
    # the engine's cache cleared under the PRM (its written trajectories kept): no stale hint
    prm.engine.reset_prefix_cache()
    prm._scores.clear()
    prm.score("Another question, whose tokens take the freed slots.", [steps[::-1]])
    longer = [steps + ["Step 10: done"]]
    got, want = prm.score(question, longer)[0], fresh.score(question, longer)[0]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5


def test_a_causal_lm_without_tags_asks_for_kind(tiny_llama):
    with pytest.raises(ValueError, match=r"--prm-kind\): one of math-shepherd, rlhflow, skywork"):
        PRM(tiny_llama, device="cpu")
    with pytest.raises(ValueError, match="unknown PRM kind 'shepherd'"):
        PRM(tiny_llama, kind="shepherd")


def test_loading_runs_no_checkpoint_code_and_reads_no_pickle(tmp_path):
    folder, _ = make_family("qwen2.5-math-prm", tmp_path / "m")
    marker = tmp_path / "code_ran"
    (folder / "modeling_prm.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_prm.Qwen2ForProcessRewardModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    prm = PRM(str(folder), device="cpu", kv_cache_tokens=1024)
    assert prm.score("q", [["a step"]]) and not marker.exists()
    # weights only as a pickle: refused, never unpickled
    weights = safetensors.torch.load_file(str(folder / "model.safetensors"))
    torch.save(weights, str(folder / "pytorch_model.bin"))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        PRM(str(folder), device="cpu")


@pytest.mark.parametrize("kind,damage,match", [
    ("qwen2.5-math-prm", "drop score.2.bias", "score.2.bias"),
    ("skywork", "reshape v_head.summary.weight", "shape mismatch for 'v_head.summary.weight'"),
])
def test_broken_heads_are_named(tmp_path, kind, damage, match):
    folder, _ = make_family(kind, tmp_path / "m")
    weights = safetensors.torch.load_file(str(folder / "model.safetensors"))
    action, name = damage.split(" ")
    if action == "drop":
        del weights[name]
    else:
        weights[name] = weights[name][:, :-1].contiguous()
    safetensors.torch.save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=match):
        PRM(str(folder), device="cpu")


def test_bad_inputs(tmp_path):
    folder, _ = make_family("skywork", tmp_path / "m")
    prm = PRM(str(folder), device="cpu", kv_cache_tokens=4096)
    with pytest.raises(ValueError, match="a trajectory has no steps"):
        prm.score("q", [["a"], []])
    with pytest.raises(ValueError, match="step 2 of a trajectory is empty"):
        prm.score("q", [["a", " \n\n "]])
    with pytest.raises(ValueError, match="steps must be strings, got int"):
        prm.score("q", [["a", 3]])
    with pytest.raises(ValueError, match="trajectories must be a list of lists"):
        prm.score("q", ["a step"])
    with pytest.raises(ValueError, match="questions must be a string or a list with one per trajectory"):
        prm.score(["q1", "q2"], [["a"]])
    with pytest.raises(ValueError, match="the PRM's context is 512"):
        prm.score("word " * 600, [["a"]])
    assert not prm.engine.scheduler.has_work()


def test_policy_and_prm_in_one_process(tiny_llama, tmp_path):
    """Both with their default budgets on the CPU (on a GPU each takes its gpu_memory_utilization
    share, test_gpu_scale.py)."""
    from tts_engine import LLM, SamplingParams
    folder, _ = make_family("skywork", tmp_path / "m")
    llm = LLM(tiny_llama, device="cpu")
    prm = PRM(str(folder), device="cpu")
    out = llm.generate("Step 1:", SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=0), use_tqdm=False)
    steps = [[o.text.strip() or "empty"] for o in out[0].outputs]
    scores = prm.score("Step 1:", steps)
    assert [len(s) for s in scores] == [1, 1, 1] and prm.stats()["computed_prompt_tokens"] > 0


def test_ids_are_checked_when_the_tokenizer_outgrows_the_model(tmp_path):
    """The PRM's ids skip the engine's check one by one only when every id its tokenizer can write
    fits the model's vocabulary; a model smaller than its tokenizer gets each id checked."""
    import torch

    from random_model import QWEN2_5_1_5B, save_random_model
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8)
    fits, small = tmp_path / "fits", tmp_path / "small"
    save_random_model(str(fits), dict(QWEN2_5_1_5B, vocab_size=258, **tiny), dtype=torch.float32,
                      value_head=True)
    save_random_model(str(small), dict(QWEN2_5_1_5B, vocab_size=200, **tiny), dtype=torch.float32,
                      value_head=True)      # (the byte-level tokenizer still has 258 ids)
    ok = PRM(str(fits), device="cpu", dtype="float32", kv_cache_tokens=4096)
    assert ok.engine.tokenizer_fits and len(ok.score("ÿ question", [["ÿ step"]])[0]) == 1
    prm = PRM(str(small), device="cpu", dtype="float32", kv_cache_tokens=4096)
    assert not prm.engine.tokenizer_fits
    with pytest.raises(ValueError, match="outside the vocabulary"):
        prm.score("ÿ question", [["ÿ step"]])


def test_a_small_score_cache_with_several_trajectories_a_call(tmp_path):
    """Remembering one trajectory's new scores may forget a tag a later trajectory of the same
    call reads: every score is read before any is remembered."""
    folder, _ = make_family("skywork", tmp_path / "m")
    prm = PRM(str(folder), device="cpu", dtype="float32", kv_cache_tokens=4096, score_cache_size=2)
    fresh = PRM(str(folder), device="cpu", dtype="float32", kv_cache_tokens=4096)
    question = "Which step?"
    prm.score(question, [["a step", "b step"]])
    got = prm.score(question, [["c step"], ["a step"]])
    want = fresh.score(question, [["c step"], ["a step"]])
    assert [s for t in got for s in t] == pytest.approx([s for t in want for s in t], abs=1e-5)


def test_which_families_write_a_step_alone_and_the_largest_id_decides_the_check(family):
    """skywork writes each step apart; qwen2.5-math-prm's text after a tag, checked on probe
    steps at load; the others write the whole text. The id check is skipped only when the
    largest id the tokenizer has fits the model (ids may have gaps)."""
    kind, folder, _ = family
    prm = PRM(str(folder), dtype="float32", device="cpu", kv_cache_tokens=8192)
    assert prm.family.extendable == (kind in ("skywork", "qwen2.5-math-prm"))
    from tts_engine.engine.engine import tokenizer_fits
    vocab = prm.engine.model_config.vocab_size
    assert prm.engine.tokenizer_fits == tokenizer_fits(prm.engine.tokenizer, vocab)
    gaps = type("T", (), {"get_vocab": lambda self: {"a": 0, "b": vocab - 1}})()
    assert tokenizer_fits(gaps, vocab)
    too_big = type("T", (), {"get_vocab": lambda self: {"a": 0, "b": vocab}})()   # 2 entries, an id too big
    assert not tokenizer_fits(too_big, vocab)

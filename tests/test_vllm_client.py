"""A client written only against vLLM's documented offline API runs unchanged on tts-engine, through a
`vllm` module that re-exports our LLM and SamplingParams: best-of-N over chat-templated batches, a
step-wise beam search (stop at "\\n\\n", stop string kept, deep-copied params turned greedy for a
lookahead), logprob access and LLM.chat, on a tiny model and on the real SmolLM2."""
from __future__ import annotations

import sys
import textwrap
import types

import pytest

import tts_engine

# The client, as a user would write it for vLLM (it imports nothing from tts_engine).
CLIENT = textwrap.dedent('''
    import copy

    from vllm import LLM, SamplingParams

    SYSTEM = "Solve the problem step by step. End with: The answer is \\\\boxed{X}."


    def conversation(problem, answer=""):
        conv = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem}]
        if answer:
            conv.append({"role": "assistant", "content": answer})
        return conv


    def best_of_n(llm, problems, n):
        tokenizer = llm.get_tokenizer()
        prompts = tokenizer.apply_chat_template([conversation(p) for p in problems], tokenize=False,
                                                add_generation_prompt=True)
        prompts = [p for p in prompts for _ in range(n)]
        params = SamplingParams(temperature=0.8, top_p=1.0, max_tokens=40, n=1, seed=0)
        responses = llm.generate(prompts, sampling_params=params, use_tqdm=False)
        assert len(responses) == len(problems) * n
        return [[r.outputs[0].text for r in responses[i * n:(i + 1) * n]] for i in range(len(problems))]


    def step_logprob(output):
        """Mean logprob of a step's tokens, from the per-token logprob dicts."""
        values = [entry[token].logprob for entry, token in zip(output.logprobs, output.token_ids)]
        return sum(values) / max(len(values), 1)


    def beam_search(llm, problem, width=4, iterations=3, lookahead=1):
        tokenizer = llm.get_tokenizer()
        params = SamplingParams(temperature=0.8, max_tokens=32, top_p=1.0, stop=["\\\\n\\\\n"],
                                include_stop_str_in_output=True, n=1, logprobs=1, seed=7)
        beams = [{"text": "", "score": 0.0, "done": False, "steps": []} for _ in range(width)]
        for i in range(iterations):
            active = [b for b in beams if not b["done"]]
            if not active:
                break
            prompts = tokenizer.apply_chat_template(
                [conversation(problem, b["text"]) for b in active], tokenize=False,
                add_generation_prompt=i == 0, continue_final_message=i > 0)
            outputs = llm.generate(prompts, params, use_tqdm=False)
            # a greedy lookahead from each candidate, as search libraries do
            greedy = copy.deepcopy(params)
            greedy.temperature = 0.0
            ahead = llm.generate([p + o.outputs[0].text for p, o in zip(prompts, outputs)], greedy,
                                 use_tqdm=False)
            for beam, out, look in zip(active, outputs, ahead):
                completion = out.outputs[0]
                assert out.finished and isinstance(out.request_id, str)
                assert completion.finish_reason in ("stop", "length")
                if completion.stop_reason == "\\\\n\\\\n":
                    assert completion.text.endswith("\\\\n\\\\n")
                beam["text"] += completion.text
                beam["steps"].append(completion.text)
                beam["score"] = step_logprob(completion) + 0.1 * step_logprob(look.outputs[0])
                beam["done"] = completion.stop_reason is None or completion.text == ""
            beams.sort(key=lambda b: -b["score"])
        return beams


    def chat_batch(llm):
        params = SamplingParams(temperature=0.0, max_tokens=12)
        outs = llm.chat([[{"role": "user", "content": "What is 2 + 3?"}],
                         [{"role": "user", "content": "Name a prime number."}]], params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]
''')


@pytest.fixture
def vllm_client(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = tts_engine.LLM, tts_engine.SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    client = types.ModuleType("client")
    exec(compile(CLIENT, "client.py", "exec"), client.__dict__)
    return client


def run_client(client, llm):
    problems = ["What is 12 * 15 + 7?", "Compute 3 + 4 - 1."]
    samples = client.best_of_n(llm, problems, n=3)
    assert [len(s) for s in samples] == [3, 3] and all(isinstance(t, str) for s in samples for t in s)
    beams = client.beam_search(llm, problems[0])
    assert len(beams) == 4
    for beam in beams:
        assert beam["text"] == "".join(beam["steps"]) and beam["steps"]
        for step in beam["steps"][:-1]:                    # a step that continued ended at "\n\n"
            assert step.endswith("\n\n")
    replies = client.chat_batch(llm)
    assert len(replies) == 2


def test_vllm_client_on_a_tiny_model(vllm_client, tiny_llama):
    # the tiny test tokenizer's chat template has no system role: give it one that has
    llm = tts_engine.LLM(model=tiny_llama, dtype="float32", seed=0, gpu_memory_utilization=0.9,
                         enable_prefix_caching=True, enforce_eager=True, tensor_parallel_size=1,
                         trust_remote_code=True, device="cpu", kv_cache_tokens=8192)
    llm.get_tokenizer().chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                                         "{% if not loop.last %}</s>{% endif %}{% endfor %}"
                                         "{% if add_generation_prompt %}</s><|assistant|>{% endif %}")
    run_client(vllm_client, llm)


def test_vllm_client_on_smollm2(vllm_client, smollm2):
    run_client(vllm_client, smollm2)
    assert smollm2.reset_prefix_cache() is True

"""Stop conditions: stop strings matched on text (inside one token or across several, kept in the
output), stop token ids, EOS and max_tokens."""
from __future__ import annotations

import pytest

from tts_engine import LLM, SamplingParams

PROMPT = {"prompt_token_ids": [7, 40, 120, 33, 250, 18]}


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=4096)


def free_run(llm, n=40):
    return llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))[0].outputs[0]


def test_stop_string_across_tokens(llm):
    ref = free_run(llm)
    tok = llm.get_tokenizer()
    pieces = [tok.decode(ref.token_ids[:i]) for i in range(len(ref.token_ids) + 1)]
    # A stop string made of the end of token 9's text and the start of token 10's.
    a, b = pieces[9], pieces[10]
    boundary = len(a)
    stop = ref.text[boundary - 1:boundary + 1]
    assert len(stop) == 2
    first = ref.text.find(stop)
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40, stop=[stop], ignore_eos=True))[
        0
    ].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == ref.text[:first + len(stop)]
    assert out.token_ids == ref.token_ids[:len(out.token_ids)]
    assert tok.decode(out.token_ids).startswith(out.text)


def test_stop_string_inside_one_token(llm):
    ref = free_run(llm)
    tok = llm.get_tokenizer()
    # first generated token whose text has 2+ characters: stop on its first character
    for i, t in enumerate(ref.token_ids):
        piece = tok.decode([t])
        if len(piece) >= 2 and piece[0] not in tok.decode(ref.token_ids[:i]):
            break
    else:
        pytest.skip("no multi-character token in this sample")
    stop = piece[0]
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40, stop=stop, ignore_eos=True))[
        0
    ].outputs[0]
    assert out.finish_reason == "stop"
    assert len(out.token_ids) == i + 1
    assert out.text == tok.decode(ref.token_ids[:i]) + stop


def test_stop_token_ids_eos_and_length(llm):
    ref = free_run(llm, 30)
    target = ref.token_ids[12]
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[target],
                                              ignore_eos=True))[0].outputs[0]
    k = ref.token_ids.index(target)
    assert (
        out.token_ids == ref.token_ids[: k + 1] and out.finish_reason == "stop" and out.stop_reason == target
    )
    short = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0].outputs[0]
    assert short.token_ids == ref.token_ids[:5] and short.finish_reason == "length"
    # Make EOS the token greedy picks third: generation stops there.
    llm.engine.eos_token_ids.add(ref.token_ids[2])
    try:
        eos = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=30))[0].outputs[0]
    finally:
        llm.engine.eos_token_ids.discard(ref.token_ids[2])
    first = ref.token_ids.index(ref.token_ids[2])
    assert eos.token_ids == ref.token_ids[:first + 1] and eos.finish_reason == "stop"


def test_smollm2_stops_at_step_boundary(smollm2):
    tok = smollm2.get_tokenizer()
    assert len(tok.encode("\n\n", add_special_tokens=False)) == 1   # one token holds "\n\n" here
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Solve step by step, one step per paragraph: what is 12 * 15 + 7?"}],
        add_generation_prompt=True)
    outs = smollm2.generate(
        [prompt], SamplingParams(n=8, temperature=0.8, max_tokens=120, stop=["\n\n"], seed=3)
    )
    stopped = [o for o in outs[0].outputs if o.stop_reason == "\n\n"]
    assert stopped, [o.text for o in outs[0].outputs]
    for o in stopped:
        assert o.text.endswith("\n\n") and "\n\n" not in o.text[:-2]

"""Stop conditions: stop strings matched on text (inside one token or across several; the matched
string removed from `text` by default and kept with include_stop_str_in_output, as in vLLM), stop
token ids, EOS, max_tokens and min_tokens."""
from __future__ import annotations

import pytest

from tts_engine import LLM, SamplingParams

PROMPT = {"prompt_token_ids": [7, 40, 120, 33, 250, 18]}


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=4096)


def run(llm, **kw):
    params = dict(temperature=0, max_tokens=40, ignore_eos=True)
    return llm.generate(PROMPT, SamplingParams(**{**params, **kw}), use_tqdm=False)[0].outputs[0]


def text_of(llm, ids) -> str:
    return llm.get_tokenizer().decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("keep", [False, True])
def test_stop_string_across_tokens(llm, keep):
    ref = run(llm)
    # A stop string made of the end of token 9's text and the start of token 10's.
    boundary = len(text_of(llm, ref.token_ids[:9]))
    stop = ref.text[boundary - 1:boundary + 1]
    assert len(stop) == 2
    first = ref.text.find(stop)
    out = run(llm, stop=[stop], include_stop_str_in_output=keep)
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == ref.text[:first + len(stop)] if keep else out.text == ref.text[:first]
    # token_ids hold everything generated, the tokens of the stop string included
    assert out.token_ids == ref.token_ids[:len(out.token_ids)]
    assert text_of(llm, out.token_ids).startswith(ref.text[:first + len(stop)])


@pytest.mark.parametrize("keep", [False, True])
def test_stop_string_inside_one_token(llm, keep):
    ref = run(llm)
    # first generated token whose text has 2+ characters: stop on its first character
    for i, t in enumerate(ref.token_ids):
        piece = text_of(llm, [t])
        if len(piece) >= 2 and piece[0] not in text_of(llm, ref.token_ids[:i]):
            break
    else:
        pytest.skip("no multi-character token in this sample")
    out = run(llm, stop=piece[0], include_stop_str_in_output=keep)
    assert out.finish_reason == "stop"
    assert len(out.token_ids) == i + 1
    assert out.text == text_of(llm, ref.token_ids[:i]) + (piece[0] if keep else "")


def test_stop_token_ids_eos_and_length(llm):
    ref = run(llm, max_tokens=30)
    target = ref.token_ids[12]
    out = run(llm, max_tokens=30, stop_token_ids=[target])
    k = ref.token_ids.index(target)
    assert out.token_ids == ref.token_ids[:k + 1]
    assert out.finish_reason == "stop" and out.stop_reason == target
    short = run(llm, max_tokens=5)
    assert short.token_ids == ref.token_ids[:5] and short.finish_reason == "length"
    # Make EOS the token greedy picks third: generation stops there, with no stop_reason (as vLLM).
    llm.engine.eos_token_ids.add(ref.token_ids[2])
    try:
        eos = run(llm, max_tokens=30, ignore_eos=False)
        late = run(llm, max_tokens=30, ignore_eos=False, min_tokens=10)
    finally:
        llm.engine.eos_token_ids.discard(ref.token_ids[2])
    first = ref.token_ids.index(ref.token_ids[2])
    assert eos.token_ids == ref.token_ids[:first + 1]
    assert eos.finish_reason == "stop" and eos.stop_reason is None
    # min_tokens: EOS is banned until 10 tokens are out (the others are the model's own choices)
    assert len(late.token_ids) >= 10 and ref.token_ids[2] not in late.token_ids[:10]


def test_min_tokens_delays_stop_strings_and_tokens(llm):
    ref = run(llm, max_tokens=30)
    stop_token = ref.token_ids[3]
    out = run(llm, max_tokens=30, stop_token_ids=[stop_token], min_tokens=8)
    assert len(out.token_ids) >= 8 and stop_token not in out.token_ids[:8]
    stop = text_of(llm, ref.token_ids[:2])[-1]
    delayed = run(llm, max_tokens=30, stop=[stop], min_tokens=12)
    assert len(delayed.token_ids) >= 12


def test_max_tokens_none_runs_to_the_context(llm):
    out = run(llm, max_tokens=None)
    assert out.finish_reason == "length" and len(PROMPT["prompt_token_ids"]) + len(out.token_ids) == 512


def test_no_detokenize(llm):
    out = run(llm, detokenize=False, max_tokens=8, logprobs=1)
    assert out.text == "" and len(out.token_ids) == 8
    assert all(lp.decoded_token is None for entry in out.logprobs for lp in entry.values())


@pytest.mark.parametrize("keep", [False, True])
def test_smollm2_stops_at_step_boundary(smollm2, keep):
    tok = smollm2.get_tokenizer()
    assert len(tok.encode("\n\n", add_special_tokens=False)) == 1   # one token holds "\n\n" here
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Solve step by step, one step per paragraph: what is 12 * 15 + 7?"}],
        add_generation_prompt=True, tokenize=False)
    params = SamplingParams(n=8, temperature=0.8, max_tokens=120, stop=["\n\n"], seed=3,
                            include_stop_str_in_output=keep)
    outs = smollm2.generate([prompt], params, use_tqdm=False)
    stopped = [o for o in outs[0].outputs if o.stop_reason == "\n\n"]
    assert stopped, [o.text for o in outs[0].outputs]
    for o in stopped:
        assert o.text.endswith("\n\n") == keep and "\n\n" not in o.text[:len(o.text) - 2 * keep]
        assert tok.decode(o.token_ids).endswith("\n\n")

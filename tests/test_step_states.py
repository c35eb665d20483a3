"""Hidden states from generation (SamplingParams.return_hidden_states, beyond vLLM): a completion
that a stop string or EOS ends returns the final state its last token was sampled from, computed in
the step's own forward pass; it equals LLM.encode's state at that position on the same tokens,
with samples forked from one prompt, beside requests that do not ask, and in both loops."""
from __future__ import annotations

import random

import pytest
import torch

from tts_engine import LLM, SamplingParams
from tts_engine.tasks.prompts import prompt_ids
from tts_engine.toy import SMALL, model_path
from tts_engine.toy.world import sample_chain


@pytest.mark.parametrize("overlap", [False, True])
def test_states_at_step_ends_equal_encode_on_the_same_tokens(overlap):
    llm = LLM(model_path(SMALL), dtype="float32", device="cpu", overlap=overlap)
    tok, rng = llm.get_tokenizer(), random.Random()
    prompts = [prompt_ids(tok, sample_chain(rng, rng.randrange(2, 7), 1).text, "llama3") for _ in range(3)]
    seed = rng.randrange(1 << 30)
    step = SamplingParams(n=3, temperature=1.0, max_tokens=32, stop=["\n\n"], include_stop_str_in_output=True,
                          seed=seed, return_hidden_states=True)
    whole = SamplingParams(n=2, temperature=1.0, max_tokens=200, seed=seed + 1, return_hidden_states=True)
    plain = SamplingParams(n=2, temperature=1.0, max_tokens=32, stop=["\n\n"], seed=seed + 2)
    # three step requests, whole solutions (they end by EOS), and a request that does not ask
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts] + [{"prompt_token_ids": prompts[0]}] * 2,
                        [step, step, step, whole, plain], use_tqdm=False)
    checked = 0
    for prompt, out in zip(prompts + [prompts[0]] * 2, outs):
        for c in out.outputs:
            asked = out is not outs[-1]
            if not asked or c.finish_reason != "stop":
                assert c.hidden_states is None
                continue
            ids = prompt + c.token_ids
            want = llm.encode([ids], positions=[[len(ids) - 2]])[0]
            assert c.hidden_states.shape == want.shape
            assert torch.allclose(c.hidden_states, want, atol=1e-5), (c.text, c.stop_reason)
            checked += 1
    reasons = {c.stop_reason for o in outs[:4] for c in o.outputs if c.hidden_states is not None}
    assert checked >= 8 and "\n\n" in reasons and None in reasons      # stop strings and EOS both


def test_return_hidden_states_must_be_a_bool():
    with pytest.raises(ValueError, match="return_hidden_states must be True or False"):
        SamplingParams(return_hidden_states=1)

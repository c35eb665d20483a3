"""Random-weight checkpoints that act out a search workload (benchmarks/bench_workload.py): a policy
whose LM head is shaped to write steps of about `paragraph` tokens ending at "\\n\\n", and a PRM in
Skywork's layout that the PRM class recognises and scores with."""
from __future__ import annotations

import statistics

import torch

from random_model import LLAMA_3_2_1B, QWEN2_5_1_5B, save_random_model
from tts_engine import LLM, PRM, SamplingParams

TINY = dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, vocab_size=1024,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32)


def test_a_shaped_policy_writes_steps_of_about_paragraph_tokens(tmp_path):
    save_random_model(str(tmp_path), dict(LLAMA_3_2_1B, **TINY), dtype=torch.float32, paragraph=40,
                      seed=torch.randint(0, 1000, ()).item())
    llm = LLM(str(tmp_path), dtype="float32", device="cpu")
    params = SamplingParams(n=64, temperature=0.7, max_tokens=1000, stop=["\n\n"], seed=1)
    out = llm.generate([{"prompt_token_ids": list(range(2, 50))}], params, use_tqdm=False)[0].outputs
    assert {c.finish_reason for c in out} == {"stop"}          # every step ends at "\n\n", none at EOS
    assert all(t < 258 for c in out for t in c.token_ids)      # byte tokens only: the text decodes
    mean = statistics.mean(len(c.token_ids) for c in out)
    # two newlines in a row at P(newline) = 1/sqrt(40): 40 + sqrt(40) tokens on average
    assert 25 < mean < 80, mean


def test_a_value_head_makes_a_skywork_prm(tmp_path):
    save_random_model(str(tmp_path), dict(QWEN2_5_1_5B, **TINY), dtype=torch.float32, value_head=True)
    prm = PRM(str(tmp_path), dtype="float32", device="cpu")
    assert prm.kind == "skywork"
    scores = prm.score("What is 1 + 1?", [["1 + 1 = 2", "The answer is 2."]])
    assert len(scores[0]) == 2 and all(0 < s < 1 for s in scores[0])

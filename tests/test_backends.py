"""The whole engine on each attention backend: the Triton kernels (interpreted on the CPU) give the
same greedy tokens as the torch references, and the CUDA-graph decode path (its static buffers,
run without capture on a CPU; captured on a GPU) gives the same tokens as eager steps."""
from __future__ import annotations

import random

import pytest
import torch

from tts_engine import LLM, SamplingParams

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_engine_triton_backend_matches_torch_backend(tmp_path):
    """The whole engine with every Triton kernel (interpreted on the CPU): same greedy tokens."""
    tiny_llama = _tiny_model(str(tmp_path))
    prompts = [{"prompt_token_ids": [random.randrange(4, 384) for _ in range(n)]} for n in (3, 21, 40)]
    prompts.append({"prompt_token_ids": prompts[2]["prompt_token_ids"][:30] + [7, 8]})   # shares a prefix
    sp = SamplingParams(n=2, temperature=0, max_tokens=8, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(tiny_llama, dtype="float32", device=DEVICE, kv_cache_tokens=1024, attention_backend=backend,
                  max_num_batched_tokens=32, max_num_seqs=16)
        llm.engine.runner.cascade_min_work = 8      # make the cascade path run
        outs[backend] = [[o.token_ids for o in r.outputs] for r in llm.generate(prompts, sp)]
    assert outs["triton"] == outs["torch"]


def _tiny_model(folder: str, max_pos: int = 512) -> str:
    from random_model import save_random_model
    save_random_model(folder, dict(architectures=["LlamaForCausalLM"], vocab_size=384, hidden_size=64,
                                   intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=max_pos),
                      seed=random.randrange(1000), dtype=torch.float32, std=0.1)
    return folder


def _graph_workload():
    """Two beams of three samples each over one prompt, plus a lone prompt: batches of 7 rows
    (padded to 8) with two cascade levels, then 1 row once the short ones finish."""
    rand = lambda n: [random.randrange(4, 384) for _ in range(n)]   # noqa: E731
    prompt = rand(40)
    prompts = [{"prompt_token_ids": prompt + rand(12)} for _ in range(2)] + [{"prompt_token_ids": rand(9)}]
    params = [SamplingParams(n=3, temperature=0, max_tokens=10, ignore_eos=True)] * 2 + \
        [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)]
    return prompts, params


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_decode_graph_buffers_match_eager(tmp_path, backend):
    """The CUDA-graph decode path without the capture (its static buffers, padding rows on the
    scratch row, static cascade levels, the Triton tile plan) gives the same tokens as eager steps."""
    folder = _tiny_model(str(tmp_path), max_pos=128)   # graphs split the whole width: keep it short here
    prompts, params = _graph_workload()
    outs, graph_steps = [], []
    for graphs in (False, True):
        llm = LLM(folder, dtype="float32", device=DEVICE, kv_cache_tokens=1024, attention_backend=backend,
                  max_num_seqs=16)
        llm.engine.runner.cascade_min_work = 8
        if graphs:
            llm.engine.runner.capture_decode_graphs(16, capture=False)
            real = llm.engine.runner.graphs.run

            def spy(ids, pos, meta, real=real):
                graph_steps.append((ids.shape[0], len(meta.cascade_levels or ())))
                return real(ids, pos, meta)

            llm.engine.runner.graphs.run = spy
        outs.append([[o.token_ids for o in r.outputs] for r in llm.generate(prompts, params)])
    assert outs[0] == outs[1]
    assert (7, 2) in graph_steps and (1, 0) in graph_steps


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run by benchmarks/gpu_check.sh)"
)
def test_cuda_graph_decode_matches_eager(tmp_path):
    """Captured graphs (plain and cascade) replay to the same greedy tokens as eager steps."""
    folder = _tiny_model(str(tmp_path))
    prompts, params = _graph_workload()
    outs = []
    for eager in (True, False):
        llm = LLM(
            folder, dtype="float32", device="cuda", kv_cache_tokens=2048, enforce_eager=eager, max_num_seqs=32
        )
        llm.engine.runner.cascade_min_work = 8
        assert (llm.engine.runner.graphs is None) == eager
        outs.append([[o.token_ids for o in r.outputs] for r in llm.generate(prompts, params)])
    assert outs[0] == outs[1]

"""Triton kernels against their torch references (computed in float64), on fresh random inputs.
Without a GPU they run under TRITON_INTERPRET=1 (set in conftest.py), so shapes stay small."""
from __future__ import annotations

import random

import pytest
import torch

from tts_engine.kernels import attention_ref as ref
from tts_engine.kernels import attention_triton as tri

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# (query heads, KV heads): MHA and GQA group sizes 1, 4 and 8
HEADS = [(4, 4), (8, 2), (8, 1)]


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in kernel output"
    return ((out.double() - expected).norm() / expected.norm()).item()


def make_pool(slots: int, hkv: int, d: int, dtype):
    return (torch.randn(slots, hkv, d, device=DEVICE).to(dtype), torch.randn(slots, hkv, d, device=DEVICE).to(dtype))


def f64(*ts):
    return [t.double() for t in ts]


def random_tables(lens: list[int], slots: int) -> torch.Tensor:
    """Each sequence gets distinct random slots (a pool shuffled like a real one)."""
    width = max(lens)
    return torch.stack([torch.randperm(slots, device=DEVICE)[:width] for _ in lens])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv(dtype):
    kc, vc = make_pool(50, 2, 64, dtype)
    kc2, vc2 = kc.clone(), vc.clone()
    k, v = torch.randn(7, 2, 64, device=DEVICE).to(dtype), torch.randn(7, 2, 64, device=DEVICE).to(dtype)
    slots = torch.randperm(50, device=DEVICE)[:7]
    tri.store_kv(kc, vc, k, v, slots)
    ref.store_kv(kc2, vc2, k, v, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,hkv", HEADS)
@pytest.mark.parametrize("d", [64, 128])
def test_decode_attention(dtype, h, hkv, d):
    lens = [1, random.randint(2, 40), random.randint(41, 150)]
    kc, vc = make_pool(400, hkv, d, dtype)
    table = random_tables(lens, 400)
    kv_lens = torch.tensor(lens, device=DEVICE)
    q = torch.randn(len(lens), h, d, device=DEVICE).to(dtype)
    out, lse = tri.decode_attention(q, kc, vc, table, kv_lens, d ** -0.5, return_lse=True)
    r_out, r_lse = ref.decode_attention(*f64(q, kc, vc), table, kv_lens, d ** -0.5, return_lse=True)
    assert rel_err(out, r_out) < TOL[dtype]
    assert rel_err(lse, r_lse) < TOL[dtype]


def test_decode_attention_sliding_window():
    lens = [5, 90]
    kc, vc = make_pool(200, 2, 64, torch.float32)
    table = random_tables(lens, 200)
    kv_lens = torch.tensor(lens, device=DEVICE)
    q = torch.randn(2, 8, 64, device=DEVICE)
    out = tri.decode_attention(q, kc, vc, table, kv_lens, 0.125, sliding_window=33)
    expected = ref.decode_attention(*f64(q, kc, vc), table, kv_lens, 0.125, sliding_window=33)
    assert rel_err(out, expected) < 1e-5


def _pad_stack(parts: list[torch.Tensor]) -> torch.Tensor:
    width = max(len(p) for p in parts)
    return torch.stack([torch.nn.functional.pad(p, (0, width - len(p))) for p in parts])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,hkv", HEADS)
@pytest.mark.parametrize("d", [64, 128])
def test_cascade_decode_attention(dtype, h, hkv, d):
    """Two levels, as in beam search: a root prompt shared by rows 0-8, then groups sharing
    prefixes of different depths past it (one group of a single row's depth 1, row 6 in no
    group), and row 9 sharing nothing; checked against plain decode over each whole context."""
    slots = 700
    kc, vc = make_pool(slots, hkv, d, dtype)
    perm = torch.randperm(slots, device=DEVICE)
    taken = 0

    def take(n):
        nonlocal taken
        taken += n
        return perm[taken - n:taken]

    root = take(random.randint(1, 90))
    group_lens = [random.randint(20, 120), 1, 67]
    groups = [[0, 3, 4], [1, 5], [2, 7, 8]]
    prefixes = [take(n) for n in group_lens]
    suffixes = [take(random.randint(1, 30)) for _ in range(10)]
    group_of = {r: g for g, rows in enumerate(groups) for r in rows}
    full = []
    for r in range(10):
        parts = ([root] if r < 9 else []) + ([prefixes[group_of[r]]] if r in group_of else []) + [suffixes[r]]
        full.append(torch.cat(parts))
    full_lens = torch.tensor([len(f) for f in full], device=DEVICE)
    q = torch.randn(10, h, d, device=DEVICE).to(dtype)
    levels = [
        (root[None], torch.tensor([len(root)], device=DEVICE), torch.tensor([list(range(9))], device=DEVICE)),
        (_pad_stack(prefixes), torch.tensor(group_lens, device=DEVICE),
         torch.tensor([g + [-1] * (3 - len(g)) for g in groups], device=DEVICE)),
    ]
    suffix_args = (_pad_stack(suffixes), torch.tensor([len(s) for s in suffixes], device=DEVICE), levels)
    expected = ref.decode_attention(*f64(q, kc, vc), _pad_stack(full), full_lens, d ** -0.5)
    out = tri.cascade_decode_attention(q, kc, vc, *suffix_args, d ** -0.5)
    assert rel_err(out, expected) < TOL[dtype]
    # the torch reference of the cascade path agrees too, with one level or two
    assert rel_err(ref.cascade_decode_attention(*f64(q, kc, vc), *suffix_args, d ** -0.5), expected) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,hkv", HEADS)
@pytest.mark.parametrize("d", [64, 128])
def test_extend_attention(dtype, h, hkv, d):
    """Ragged chunks (1 token, a partial tile, several tiles) over cached prefixes of 0..n tokens."""
    q_lens = [1, random.randint(2, 31), random.randint(33, 70)]
    prefix = [random.randint(0, 50), 0, random.randint(1, 40)]
    kv_lens = [p + n for p, n in zip(prefix, q_lens)]
    kc, vc = make_pool(400, hkv, d, dtype)
    table = random_tables(kv_lens, 400)
    q = torch.randn(sum(q_lens), h, d, device=DEVICE).to(dtype)
    q_start = torch.tensor([0, q_lens[0], q_lens[0] + q_lens[1]], device=DEVICE)
    args = (table, q_start, torch.tensor(q_lens, device=DEVICE), torch.tensor(kv_lens, device=DEVICE), d ** -0.5)
    out = tri.extend_attention(q, kc, vc, *args)
    expected = ref.extend_attention(*f64(q, kc, vc), *args)
    assert rel_err(out, expected) < TOL[dtype]


def test_extend_attention_sliding_window():
    q_lens, kv_lens = [40], [100]
    kc, vc = make_pool(200, 2, 64, torch.float32)
    table = random_tables(kv_lens, 200)
    q = torch.randn(40, 8, 64, device=DEVICE)
    args = (table, torch.tensor([0], device=DEVICE), torch.tensor(q_lens, device=DEVICE),
            torch.tensor(kv_lens, device=DEVICE), 0.125, 24)
    assert rel_err(tri.extend_attention(q, kc, vc, *args), ref.extend_attention(*f64(q, kc, vc), *args)) < 1e-5


# ---------------------------------------------------------------- per-token kernels

from tts_engine.kernels import elementwise_ref as eref  # noqa: E402
from tts_engine.kernels import elementwise_triton as etri  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, with_residual):
    x = torch.randn(5, 96, device=DEVICE).to(dtype)
    w = (torch.rand(96, device=DEVICE) + 0.5).to(dtype)
    res = torch.randn(5, 96, device=DEVICE).to(dtype) if with_residual else None
    out = etri.rms_norm(x, w, 1e-5, res)
    expected = eref.rms_norm(*f64(x, w), 1e-5, None if res is None else res.double())
    if with_residual:
        assert rel_err(out[1], expected[1]) < TOL[dtype]
        out, expected = out[0], expected[0]
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope_type", ["default", "llama3"])
@pytest.mark.parametrize("d,rot", [(64, 64), (128, 128), (64, 32)])
def test_rope(dtype, rope_type, d, rot):
    from tts_engine.config import RopeConfig
    from tts_engine.models.llama import Rotary
    rope = RopeConfig(theta=500000.0, rope_type=rope_type, factor=8.0, original_max_position_embeddings=64,
                      partial_rotary_factor=rot / d)
    table = Rotary(rope, d, 300).to(DEVICE)
    x = torch.randn(7, 6, d, device=DEVICE).to(dtype)
    pos = torch.tensor([0, 1, 5, 63, 64, 200, 299], device=DEVICE)
    out = etri.apply_rope(x, pos, table.cos, table.sin)
    expected = eref.apply_rope(x.double(), pos, table.cos.double(), table.sin.double())
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul(dtype):
    x = torch.randn(4, 2 * 80, device=DEVICE).to(dtype)
    assert rel_err(etri.silu_and_mul(x), eref.silu_and_mul(x.double())) < TOL[dtype]


def test_engine_triton_backend_matches_torch_backend(tmp_path):
    """The whole engine with every Triton kernel (interpreted on the CPU): same greedy tokens."""
    from tts_engine import LLM, SamplingParams
    from tts_engine.random_model import save_random_model
    tiny_llama = str(tmp_path)
    save_random_model(tiny_llama, dict(architectures=["LlamaForCausalLM"], vocab_size=384, hidden_size=64,
                                       intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=256),
                      seed=random.randrange(1000), dtype=torch.float32, std=0.1)
    prompts = [{"prompt_token_ids": [random.randrange(4, 384) for _ in range(n)]} for n in (3, 21, 40)]
    prompts.append({"prompt_token_ids": prompts[2]["prompt_token_ids"][:30] + [7, 8]})   # shares a prefix
    sp = SamplingParams(n=2, temperature=0, max_tokens=8, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(tiny_llama, dtype="float32", device=DEVICE, kv_cache_tokens=1024, attention_backend=backend,
                  max_num_batched_tokens=32)
        llm.runner.cascade_min_work = 8      # make the cascade path run
        outs[backend] = [[o.token_ids for o in r.outputs] for r in llm.generate(prompts, sp)]
    assert outs["triton"] == outs["torch"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run by benchmarks/gpu_check.sh)")
def test_cuda_graph_decode_matches_eager(tmp_path):
    from tts_engine import LLM, SamplingParams
    from tts_engine.random_model import save_random_model
    save_random_model(str(tmp_path), dict(architectures=["LlamaForCausalLM"], vocab_size=384, hidden_size=128,
                                          intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, max_position_embeddings=512),
                      dtype=torch.float32, std=0.1)
    prompts = [{"prompt_token_ids": [random.randrange(4, 384) for _ in range(n)]} for n in (3, 17, 40, 5, 9)]
    sp = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outs = []
    for eager in (True, False):
        llm = LLM(str(tmp_path), dtype="float32", device="cuda", kv_cache_tokens=2048, enforce_eager=eager,
                  max_num_seqs=32)
        assert (llm.runner.graphs is None) == eager
        outs.append([r.outputs[0].token_ids for r in llm.generate(prompts, sp)])
    assert outs[0] == outs[1]

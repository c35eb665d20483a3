"""What would break at GPU scale (millions of KV slots, two engines per GPU, 256-row batches), each
shown on the CPU: eviction work per step, memory shares, host-device syncs per step, fork uploads,
Triton kernel variants, int64 offsets, non-finite logits."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from tts_engine import LLM, SamplingParams
from tts_engine.config import ModelConfig
from tts_engine.engine.memory import CUDA_CONTEXT_BYTES, activation_bytes, kv_cache_tokens
from tts_engine.engine.sampler import Sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1 << 30


def run_script(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- 1. eviction

def test_eviction_work_per_step_does_not_grow_with_the_tree():
    """A full pool evicts on almost every step. The work per step (heap entries examined) stays
    small and the same whether the cached tree is small or ten times larger; walking the tree
    per eviction would cost its node count each time."""
    results = {}
    for slots in (30_000, 300_000):
        results[slots] = run_script("benchmarks/bench_scheduler.py", "--slots", str(slots), "--prompt", "128",
                                    "--samples", "8", "--tokens", "16", "--requests", "4", "--steps", "120",
                                    "--json")
    small, large = results[30_000], results[300_000]
    assert large["nodes_at_start"] > 8 * small["nodes_at_start"] > 800
    for r in (small, large):
        work = r["work_per_step"][10:]
        assert sum(work) > 0, "the pool never had to evict"
        assert max(work) <= 64
    mean = lambda r: sum(r["work_per_step"][10:]) / len(r["work_per_step"][10:])   # noqa: E731
    assert mean(large) <= 2 * mean(small) + 2


# ---------------------------------------------------------------- 2. memory for two engines

def config(params_b: float, layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int):
    cfg = ModelConfig("LlamaForCausalLM", vocab, hidden, inter, layers, heads, kv_heads, hidden // heads,
                      1e-5, 8192)
    return cfg, int(params_b * 1e9 * 2)      # bf16 weights


LLAMA_1B = config(1.24, 16, 2048, 32, 8, 8192, 128256)
LLAMA_8B = config(8.03, 32, 4096, 32, 8, 14336, 128256)
QWEN_7B = config(7.6, 28, 3584, 28, 4, 18944, 152064)


def place(cards_free: int, total: int, model, share: float) -> tuple[int, int]:
    """One engine on a card with cards_free bytes free: (its KV tokens, bytes free afterwards)."""
    cfg, weights = model
    free = cards_free - weights
    act = activation_bytes(cfg, 2, 2048, 256)
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
    tokens = kv_cache_tokens(total, free, share, weights, act, per_token)
    return tokens, free - max(tokens, 0) * per_token - act


@pytest.mark.parametrize("policy,prm", [(LLAMA_8B, QWEN_7B), (LLAMA_1B, QWEN_7B), (LLAMA_8B, LLAMA_8B)])
def test_two_engines_share_a_gpu_by_their_shares(policy, prm):
    total = int(141 * GiB)                   # an H200, as torch.cuda.mem_get_info reports it
    free = total - CUDA_CONTEXT_BYTES
    # each takes its own share of the card: both get a pool, and together they stay within 0.9 of it
    kv_a, free = place(free, total, policy, 0.45)
    kv_b, free = place(free, total, prm, 0.45)
    assert kv_a > 100_000 and kv_b > 100_000
    assert free >= 0.1 * total - CUDA_CONTEXT_BYTES - 1
    # the old rule ("leave 1 - u of the card free") left the second engine nothing at 0.45 / 0.45
    # shares; at the default 0.9 the second engine is refused, not squeezed into what is left
    _, free = place(total - CUDA_CONTEXT_BYTES, total, policy, 0.9)
    assert place(free, total, prm, 0.9)[0] <= 0


def test_the_first_engine_alone_gets_its_share_less_weights():
    cfg, weights = LLAMA_8B
    total = int(141 * GiB)
    act = activation_bytes(cfg, 2, 2048, 256)
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
    tokens = kv_cache_tokens(total, total - weights, 0.9, weights, act, per_token)
    assert tokens * per_token == pytest.approx(0.9 * total - weights - act, abs=per_token)


# ---------------------------------------------------------------- 3. host-device syncs

class SyncCounter:
    """Counts, per engine step, device-to-host copies (tolist, item, cpu, numpy, bool/int/float of
    a tensor), blocking uploads (torch.tensor(..., device=...)) and list-indexed gathers, made by
    the engine's own code (tts_engine and its kernels)."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__"):
            self._wrap(monkeypatch, torch.Tensor, name, name)
        real_tensor = torch.tensor

        def tensor(*args, **kwargs):
            if kwargs.get("device") is not None and self._ours():
                self.calls.append("torch.tensor(device=)")
            return real_tensor(*args, **kwargs)

        monkeypatch.setattr(torch, "tensor", tensor)
        real_getitem, real_setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

        def getitem(t, index):
            if _has_list(index) and self._ours():
                self.calls.append("list index")
            return real_getitem(t, index)

        def setitem(t, index, value):
            if _has_list(index) and self._ours():
                self.calls.append("list index")
            return real_setitem(t, index, value)

        monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)
        monkeypatch.setattr(torch.Tensor, "__setitem__", setitem)

    def _wrap(self, monkeypatch, owner, attr, label):
        real = getattr(owner, attr)

        def wrapper(t, *a, **k):
            if self._ours():
                self.calls.append(label)
            return real(t, *a, **k)

        monkeypatch.setattr(owner, attr, wrapper)

    @staticmethod
    def _ours() -> bool:
        frame = sys._getframe(2)
        path = frame.f_code.co_filename
        return ("tts_engine" in path or f"{os.sep}kernels{os.sep}" in path) and "attention_ref" not in path


def _has_list(index) -> bool:
    return isinstance(index, list) or (isinstance(index, tuple) and any(isinstance(i, list) for i in index))


@pytest.mark.parametrize("params", [
    SamplingParams(n=4, temperature=0.7, max_tokens=6, ignore_eos=True, seed=1),
    SamplingParams(n=4, temperature=0, max_tokens=6, ignore_eos=True, logprobs=2),
])
def test_a_decode_step_copies_to_the_host_once(tiny_llama, monkeypatch, params):
    """The sampled tokens and their logprobs come back in one copy; nothing else waits for the
    device. (The torch attention reference, the CPU backend, is left out: its extend loops on the
    host; decode steps do not use it that way.)"""
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=1024, overlap=False)   # step by step
    prompts = [{"prompt_token_ids": [5, 6, 7, 8, 9]}, {"prompt_token_ids": [5, 6, 7, 40, 41, 42]}]
    per_step, engine = [], llm.engine
    real_step = engine.step

    def counted_step():
        counter.calls.clear()
        sched = engine.scheduler
        decode_only = not sched.waiting and all(not s.is_prefilling for s in sched.running)
        done = real_step()
        per_step.append((decode_only, list(counter.calls)))
        return done

    engine.step = counted_step
    counter = SyncCounter(monkeypatch)
    llm.generate(prompts, params)
    monkeypatch.undo()
    decode_steps = [calls for decode_only, calls in per_step if decode_only]
    assert len(decode_steps) >= 4
    for calls in decode_steps:
        assert calls == ["tolist"], calls
    for _, calls in per_step:      # the prefill step (forks included) too
        assert calls.count("tolist") == 1
        assert "list index" not in calls and "torch.tensor(device=)" not in calls


# ---------------------------------------------------------------- 4. forks

def test_forks_copy_the_parent_row_on_the_device(tiny_llama):
    """16 samples of a 400-token prompt: the siblings' slot-table rows are copied from the parent on
    the device, so the entries uploaded grow with the samples, not samples x prompt length; and the
    copied rows are right (greedy samples equal those computed without any sharing)."""
    prompt = {"prompt_token_ids": [(7 * i) % 380 + 4 for i in range(400)]}
    sp = SamplingParams(n=16, temperature=0, max_tokens=8, ignore_eos=True)
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=8192)
    outs = [o.token_ids for o in llm.generate(prompt, sp)[0].outputs]
    # the prompt once, then each sample's 7 decode tokens
    assert llm.engine.runner.table_entries_written == 400 + 16 * 7
    alone = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=8192, enable_prefix_caching=False)
    assert outs == [o.token_ids for o in alone.generate(prompt, sp)[0].outputs]


# ---------------------------------------------------------------- 5. Triton variants

def test_decode_kernels_compile_a_handful_of_variants():
    """Random step shapes (batch 1-256, contexts to 4k, up to 3 cascade levels): the integers that
    change every step are not specialized, so the kernel cache holds a few variants (the cascade
    tile widths), not one per value class of every integer."""
    counts = run_script("tests/triton_variants.py", "300")
    assert counts["partial"] <= 6 and counts["reduce"] <= 3, counts


# ---------------------------------------------------------------- 6. int64 offsets

def test_kernel_program_ids_are_int64_before_any_offset():
    for name in ("attention_triton.py", "elementwise_triton.py"):
        source = open(os.path.join(ROOT, "kernels", name)).read()
        ids = re.findall(r"tl\.program_id\(\d\)(\.to\(tl\.int64\))?", source)
        assert ids and all(ids), f"{name}: a program id is used as int32"


def test_silu_and_mul_past_two_billion_elements():
    """A row offset past 2^31 elements (rows x stride, as with ~57k tokens of Qwen2.5-7B's MLP): the
    second row is read and written where it is. (Triton's interpreter computes program ids in 64
    bits, so this checks the int64 offsets land right; the source check above is what catches an
    int32 product.) The storage is allocated lazily, so only the touched pages cost memory."""
    from tts_engine.kernels import elementwise_ref, elementwise_triton
    n = 64
    stride = 2 ** 31 + 128
    base = torch.empty(stride + 2 * n, dtype=torch.float16)
    x = base.as_strided((2, 2 * n), (stride, 1))
    x.copy_(torch.randn(2, 2 * n).half())
    out = elementwise_triton.silu_and_mul(x)
    assert torch.allclose(out.float(), elementwise_ref.silu_and_mul(x.float()), atol=1e-2)


# ---------------------------------------------------------------- 7. non-finite logits

def test_non_finite_logits_fall_back_to_the_argmax():
    logits = torch.randn(5, 300)
    logits[0, 7] = float("nan")
    logits[1, :] = float("nan")
    logits[2, 11] = float("inf")
    logits[3, :] = float("-inf")
    params = [SamplingParams(temperature=0.8)] * 3 + [SamplingParams(temperature=0),
                                                      SamplingParams(top_p=0.5)]
    sampler = Sampler()
    out = sampler(logits.clone(), params, [0.5] * 5)
    assert ((out.tokens >= 0) & (out.tokens < 300)).all()
    assert not torch.isfinite(out.lse[:4]).any() and torch.isfinite(out.lse[4])
    first = int(logits[0].nan_to_num(nan=-1e9).argmax())
    assert [sampler.fallback(logits[i]) for i in range(4)] == [first, 0, 11, 0]


def test_engine_survives_nan_logits(tiny_llama):
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=1024)
    model = llm.engine.model
    real = model.compute_logits

    def poisoned(hidden, **kw):
        out = real(hidden, **kw)
        out[0] = float("nan")
        return out

    model.compute_logits = poisoned
    with pytest.warns(RuntimeWarning, match="non-finite logits"):
        out = llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(temperature=1.0, max_tokens=4,
                                                                           ignore_eos=True))[0].outputs[0]
    assert out.token_ids == [0, 0, 0, 0] and out.finish_reason == "length"

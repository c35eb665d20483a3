"""FLOPs accounting: the formulas on a tiny config counted by hand, and the engine's counter adds up
exactly what it computed (prefill once, decode per token, the head per sampling row)."""
from __future__ import annotations

import pytest
import torch

from tts_engine import LLM, SamplingParams
from tts_engine.config import ModelConfig
from tts_engine.flops import attention_flops, decode_token_cost, decoder_flops, linear_flops_per_token
from tts_engine.models.heads import ClassificationHead, LMHead, ValueHead

# hidden 4, 2 layers, 2 query heads and 1 KV head of dim 2 (q_size 4, kv_size 2), MLP 6, vocab 10
TINY = ModelConfig(
    architecture="LlamaForCausalLM", vocab_size=10, hidden_size=4, intermediate_size=6, num_layers=2,
    num_heads=2, num_kv_heads=1, head_dim=2, rms_norm_eps=1e-6, max_position_embeddings=64)


def test_formulas_by_hand():
    # per layer and token, multiply-adds: qkv 4 x (4 + 2 + 2) = 32, o 4 x 4 = 16, MLP 3 x 4 x 6 = 72
    assert linear_flops_per_token(TINY) == 2 * 2 * (32 + 16 + 72) == 480
    # positions 0, 1, 2 see 1, 2, 3 keys: QK^T and PV are 2 x q_size multiply-adds per key, per layer
    assert attention_flops(TINY, 0, 3) == 2 * 2 * 2 * 4 * (1 + 2 + 3) == 192
    assert attention_flops(TINY, 3, 4) == 2 * 2 * 2 * 4 * 4 == 128
    assert decoder_flops(TINY, [(0, 3)]) == 3 * 480 + 192 == 1632
    assert decoder_flops(TINY, [(0, 3), (3, 4)]) == 1632 + 480 + 128
    # heads, per row: hidden x vocab (or x the columns read), hidden x 1, hidden x (hidden + labels)
    assert LMHead.flops(TINY, 3) == 2 * 4 * 10 * 3 == 240 and LMHead.flops(TINY, 3, 2) == 2 * 4 * 2 * 3
    assert ValueHead.flops(TINY, 3) == 2 * 4 * 3
    assert ClassificationHead.flops(TINY, 3) == 2 * (4 * 4 + 4 * 2) * 3
    windowed = ModelConfig(**{**TINY.__dict__, "sliding_window": 2})
    assert attention_flops(windowed, 0, 3) == 2 * 2 * 2 * 4 * (1 + 2 + 2) == 160


def test_engine_counts_what_it_computes(tiny_llama):
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048)
    cfg = llm.engine.model_config
    prompt = {"prompt_token_ids": list(range(10, 20))}
    llm.generate(prompt, SamplingParams(n=3, temperature=1.0, max_tokens=5, ignore_eos=True, seed=0))
    # the prompt once with one head row (the three samples fork off it), then each sample feeds
    # its first 4 tokens back one at a time (its 5th is never fed)
    expected = decoder_flops(cfg, [(0, 10)]) + LMHead.flops(cfg, 1) + 3 * sum(
        decoder_flops(cfg, [(p, p + 1)]) + LMHead.flops(cfg, 1) for p in range(10, 14)
    )
    assert llm.stats()["flops"] == expected
    llm.reset_stats()
    llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1))   # cached but the last prompt token
    assert llm.stats()["flops"] == decoder_flops(cfg, [(9, 10)]) + LMHead.flops(cfg, 1)


def test_decode_token_cost_is_forward_flops_of_one_token(tiny_llama):
    """The engine's per-token shortcut against decoder_flops, with and without a sliding window."""
    import dataclasses
    cfg = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=256).engine.model_config
    for window in (None, 7):
        c = dataclasses.replace(cfg, sliding_window=window)
        a, b, w = decode_token_cost(c, LMHead.flops(c, 1))
        for n in (1, 5, 7, 8, 300):
            one = decoder_flops(c, [(n - 1, n)]) + LMHead.flops(c, 1)
            assert a + b * (n if w is None else min(n, w)) == one


def test_bytes_moved_by_hand(tiny_llama):
    """The engine's byte counts against a hand computation from the checkpoint (transformers' own
    parameters): a plain request, a forked one (three samples off one prefill, each reading the
    whole prompt), and the same under cascade (the prompt read once a step for the three)."""
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    c = hf.config
    D = sum(p.numel() * 4 for n, p in hf.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    E, H = c.hidden_size * 4, c.vocab_size * c.hidden_size * 4          # an embedding row, the LM head
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    prompt = {"prompt_token_ids": list(range(10, 20))}

    def run(n, cascade):
        llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048)
        llm.engine.runner.cascade_min_work = cascade
        params = SamplingParams(n=n, temperature=1.0, max_tokens=3, ignore_eos=True, seed=0)
        out = llm.generate(prompt, params, use_tqdm=False)[0]
        st = llm.stats()
        assert (out.work.weight_bytes, out.work.kv_read_bytes, out.work.kv_write_bytes) == pytest.approx(
            (st["weight_bytes"], st["kv_read_bytes"], st["kv_write_bytes"]))
        return out.work

    # the prompt's prefill (10 tokens, one head row), then 2 decode steps of contexts 11 and 12
    plain = run(1, None)
    assert plain.weight_bytes == pytest.approx(3 * D + 12 * E + 3 * H)
    assert plain.kv_read_bytes == pytest.approx((10 + 11 + 12) * kv)
    assert plain.kv_write_bytes == pytest.approx(12 * kv)
    # three samples: the prefill once, then 2 decode steps of 3 rows that share each step's weights
    forked = run(3, None)
    assert forked.weight_bytes == pytest.approx((D + 10 * E + H) + 2 * (D + 3 * E + H))
    assert forked.kv_read_bytes == pytest.approx((10 + 3 * 11 + 3 * 12) * kv)
    assert forked.kv_write_bytes == pytest.approx((10 + 6) * kv)
    # cascade: the 10 prompt tokens read once a step for the three, each its own suffix (1, then 2)
    shared = run(3, 1)
    assert shared.weight_bytes == pytest.approx(forked.weight_bytes)
    assert shared.kv_read_bytes == pytest.approx((10 + (10 + 3 * 1) + (10 + 3 * 2)) * kv)
    assert shared.kv_write_bytes == pytest.approx(forked.kv_write_bytes)


def test_bytes_are_the_same_when_the_host_overlaps_the_device(tiny_llama):
    """With overlap, a step is planned before the one before it is seen, so a sequence that the
    earlier step stopped still has a (wasted) row in it: the live rows share that step's reads, and
    every request moves the bytes it moves when stepping synchronously. One request stops on a
    stop token it samples, the other runs on; cascade on (the prompt is shared)."""
    prompt = list(range(10, 30))
    probe = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048)
    first = probe.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=6,
                                                                     ignore_eos=True), use_tqdm=False)
    stop = first[0].outputs[0].token_ids[2]
    works = {}
    for overlap in (False, True):
        llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048, overlap=overlap)
        llm.engine.runner.cascade_min_work = 1
        outs = llm.generate([{"prompt_token_ids": prompt}] * 2,
                            [SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[stop]),
                             SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)], use_tqdm=False)
        assert len(outs[0].outputs[0].token_ids) <= 3 and len(outs[1].outputs[0].token_ids) == 8
        st = llm.stats()
        works[overlap] = [(o.work.weight_bytes, o.work.kv_read_bytes, o.work.kv_write_bytes) for o in outs]
        total = [sum(w[k] for w in works[overlap]) for k in range(3)]
        assert total == pytest.approx([st["weight_bytes"], st["kv_read_bytes"], st["kv_write_bytes"]])
    assert works[True] == [pytest.approx(w) for w in works[False]]

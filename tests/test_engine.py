"""Scheduler + cache behaviour end to end: outputs do not depend on caching, budget or batching,
and shared prefixes are really stored and computed once."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import save_tiny_model
from tts_engine import LLM, SamplingParams


@pytest.fixture(scope="module")
def long_ctx_model(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_long"))
    save_tiny_model(folder, "llama", seed=7, max_position_embeddings=2048)
    return folder


def shared_prefix_prompts(n: int, prefix_len: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(4, 384) for _ in range(prefix_len)]
    prompts = [prefix + [rng.randrange(4, 384) for _ in range(rng.randrange(1, 12))] for _ in range(n - 2)]
    prompts.append(list(prompts[0]))                               # an exact duplicate
    prompts.append([rng.randrange(4, 384) for _ in range(9)])      # unrelated
    return prompts


def greedy(llm: LLM, prompts, max_tokens=40, n=1):
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(n=n, temperature=0, max_tokens=max_tokens, ignore_eos=True))
    return [[o.token_ids for o in out.outputs] for out in outs]


def test_outputs_independent_of_cache_budget_and_batching(tiny_llama):
    prompts = shared_prefix_prompts(6, 30, seed=random.randrange(1 << 30))
    base = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=8192)
    expected = greedy(base, prompts, n=2)
    # Alone, one prompt at a time, fresh cache each time.
    alone = [
        greedy(
            LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=8192, enable_prefix_caching=False),
            [p],
            n=2,
        )[0]
        for p in prompts[:3]
    ]
    assert alone == expected[:3]
    # Prefix cache off.
    off = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=8192, enable_prefix_caching=False)
    assert greedy(off, prompts, n=2) == expected
    assert off.stats()["cached_prompt_tokens"] == 0
    # A pool that holds barely more than one sequence: eviction, preemption and recompute.
    tiny = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=100)
    assert greedy(tiny, prompts, n=2) == expected
    assert tiny.stats()["preemptions"] > 0 and tiny.stats()["recomputed_tokens"] > 0
    assert tiny.stats()["kv_tokens_peak"] <= 100
    # Chunked prefill: at most 16 tokens a step.
    chunked = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=8192, max_num_batched_tokens=16)
    assert greedy(chunked, prompts, n=2) == expected
    # Running the same batch again reuses everything but the last prompt token of each request
    # (its n samples fork after that token's logits).
    st = base.stats()
    base.reset_stats()
    assert greedy(base, prompts, n=2) == expected
    again = base.stats()
    assert again["computed_prompt_tokens"] == len(prompts)
    assert again["cached_prompt_tokens"] == st["prompt_tokens"] - len(prompts)


def test_samples_of_one_prompt_share_its_kv(long_ctx_model):
    llm = LLM(long_ctx_model, dtype="float32", device="cpu", kv_cache_tokens=8192)
    prompt = [random.randrange(4, 384) for _ in range(500)]
    outs = llm.generate({"prompt_token_ids": prompt},
                        SamplingParams(n=16, temperature=1.0, max_tokens=20, ignore_eos=True, seed=1))
    st = llm.stats()
    generated = sum(len(o.token_ids) for o in outs[0].outputs)
    assert generated == 16 * 20 == st["generated_tokens"]
    assert st["prompt_tokens"] == 16 * 500
    # The prompt is computed once; the other 15 samples fork off its last position's logits.
    assert st["computed_prompt_tokens"] == 500
    assert st["cached_prompt_tokens"] == 15 * 500
    assert outs[0].num_cached_tokens == st["cached_prompt_tokens"]
    # KV held: the prompt once plus each sample's own tokens, not 16 copies of the prompt.
    assert st["kv_tokens_peak"] <= 500 + 16 * 20
    assert len({tuple(o.token_ids) for o in outs[0].outputs}) > 1


def test_resubmitting_a_prefix_plus_a_step_computes_only_the_tail(long_ctx_model):
    llm = LLM(long_ctx_model, dtype="float32", device="cpu", kv_cache_tokens=8192)
    prompt = [random.randrange(4, 384) for _ in range(300)]
    first = llm.generate(
        {"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    )
    step = first[0].outputs[0].token_ids
    extra = [random.randrange(4, 384) for _ in range(5)]
    llm.reset_stats()
    llm.generate({"prompt_token_ids": prompt + step + extra}, SamplingParams(temperature=0, max_tokens=4))
    st = llm.stats()
    # Everything generated before is cached except the last sampled token, which never had K/V.
    assert st["computed_prompt_tokens"] == 1 + len(extra)
    assert st["cached_prompt_tokens"] == len(prompt) + len(step) - 1


def test_prompts_with_a_common_prefix_in_one_batch_compute_it_once(long_ctx_model):
    llm = LLM(long_ctx_model, dtype="float32", device="cpu", kv_cache_tokens=8192)
    prefix = [random.randrange(4, 384) for _ in range(300)]
    # distinct first tokens: tails that happened to start alike would share more than the prefix
    tails = [
        [first] + [random.randrange(4, 384) for _ in range(6)] for first in random.sample(range(4, 384), 4)
    ]
    llm.generate(
        [{"prompt_token_ids": prefix + t} for t in tails], SamplingParams(temperature=0, max_tokens=2)
    )
    st = llm.stats()
    assert st["computed_prompt_tokens"] == 300 + 4 * 7
    assert st["steps"] == 2   # all four were prefilled together in the first step


def test_encode_reuses_the_cached_prefix(tiny_llama):
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=4096)
    ids = [random.randrange(4, 384) for _ in range(60)]
    full = llm.engine.model.compute_logits(llm.encode([ids])[0])
    llm.reset_stats()
    tail = llm.engine.model.compute_logits(llm.encode([ids], positions=[[50, 59]])[0])
    assert llm.stats()["computed_prompt_tokens"] == 10
    assert (tail - full[[50, 59]]).abs().max().item() < 1e-4


def beam_tree_prompts() -> list[list[int]]:
    """Beam-search shape after two rounds: one prompt, two beams of one step each, and two
    children per beam with a step of their own."""
    def steps(n: int, count: int) -> list[list[int]]:   # distinct first tokens, so the tree is exactly this
        return [
            [first] + [random.randrange(4, 384) for _ in range(n - 1)]
            for first in random.sample(range(4, 384), count)
        ]

    prompt = steps(120, 1)[0]
    beams = [prompt + s for s in steps(9, 2)]
    return [b + s for b in beams for s in steps(7, 2)]


def run_with_levels(llm: LLM, prompts, sp) -> tuple[list, list[int]]:
    """Outputs, and how many cascade levels each decode step used."""
    seen, real = [], llm.engine.runner.cascade_levels

    def spy(decode):
        levels, starts = real(decode)
        seen.append(len(levels))
        return levels, starts

    llm.engine.runner.cascade_levels = spy
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp)
    return [[o.token_ids for o in r.outputs] for r in outs], seen


def test_multi_level_cascade_matches_plain_decode(long_ctx_model):
    """Eight samples in a beam tree: decode reads the prompt once for all eight (level 0), each
    beam's step once for its four (level 1), each child's step once for its two samples (level 2)."""
    prompts = beam_tree_prompts()
    sp = SamplingParams(n=2, temperature=1.0, max_tokens=12, ignore_eos=True, seed=5)
    results = []
    for work in (None, 1):
        llm = LLM(long_ctx_model, dtype="float32", device="cpu", kv_cache_tokens=4096)
        llm.engine.runner.cascade_min_work = work
        outs, seen = run_with_levels(llm, prompts, sp)
        results.append(outs)
        assert max(seen) == (0 if work is None else 3)
    assert results[0] == results[1]


def test_cascade_levels_follow_the_tree(long_ctx_model):
    """The spans found for the beam tree, by hand: the 120-token prompt shared by all eight samples,
    each beam's 9 tokens by its four, each child's 7 tokens by its two; the decoding token is each
    sample's own."""
    llm = LLM(long_ctx_model, dtype="float32", device="cpu", kv_cache_tokens=4096)
    llm.engine.runner.cascade_min_work = 1
    captured = []
    real = llm.engine.runner.cascade_levels

    def spy(decode):
        levels, starts = real(decode)
        if not captured and levels:
            captured.append((levels, starts, [s.num_computed for s in decode]))
        return levels, starts

    llm.engine.runner.cascade_levels = spy
    llm.generate([{"prompt_token_ids": p} for p in beam_tree_prompts()],
                 SamplingParams(n=2, max_tokens=3, ignore_eos=True))
    levels, starts, lengths = captured[0]
    spans = [sorted((g.start, g.end, len(g.rows)) for g in level) for level in levels]
    assert spans == [[(0, 120, 8)], [(120, 129, 4)] * 2, [(129, 136, 2)] * 4]
    assert starts == [136] * 8 and lengths == [137] * 8


def test_samples_beyond_max_num_seqs_wait_their_turn(tiny_llama):
    """n=6 with room for 4: the extra samples queue (their prompt is then a cache hit) and no step
    runs more than 4 sequences; the samples are the same as with room for all."""
    prompt = {"prompt_token_ids": [random.randrange(4, 384) for _ in range(30)]}
    sp = SamplingParams(n=6, temperature=1.0, max_tokens=8, ignore_eos=True, seed=3)
    outs, widest = [], []
    for room in (16, 4):
        llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048, max_num_seqs=room)
        real, sizes = llm.engine.scheduler.schedule, []

        def spy(real=real, sizes=sizes, llm=llm):
            batch = real()
            sizes.append(len(llm.engine.scheduler.running))
            return batch

        llm.engine.scheduler.schedule = spy
        outs.append([o.token_ids for o in llm.generate(prompt, sp)[0].outputs])
        widest.append(max(sizes))
        assert llm.stats()["computed_prompt_tokens"] == 30 + (0 if room == 16 else 2)   # last token, twice
    assert widest == [6, 4]
    assert outs[0] == outs[1]


def test_encode_with_a_chunk_ending_before_the_last_token(tiny_llama):
    """A chunked prefill that stops one token short of the end: the last position is still
    computed as prefill (encode-only sequences never decode), and every hidden state is kept."""
    ids = [random.randrange(4, 384) for _ in range(17)]
    whole = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=1024).encode([ids])[0]
    chunked = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=1024, max_num_batched_tokens=16)
    assert torch.allclose(chunked.encode([ids])[0], whole, atol=1e-5)
    assert chunked.stats()["computed_prompt_tokens"] == 17 and chunked.stats()["generated_tokens"] == 0


@pytest.mark.parametrize("overlap", [False, True])
def test_the_heap_is_frozen_only_while_the_engine_runs(tiny_llama, overlap):
    """Objects made before a run sit outside the collector's generations during it (so a full
    collection inside a step walks only what steps made), and are back afterwards; a caller's own
    frozen objects are left as the caller froze them."""
    import gc
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=1024, overlap=overlap)
    counts, schedule = [], llm.engine.scheduler.schedule

    def spy():
        counts.append(gc.get_freeze_count())
        return schedule()

    llm.engine.scheduler.schedule = spy
    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=0)
    llm.generate({"prompt_token_ids": [3, 4, 5]}, params, use_tqdm=False)
    assert counts and min(counts) > 0 and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        mine, counts[:] = gc.get_freeze_count(), []
        llm.generate({"prompt_token_ids": [3, 4, 5]}, params, use_tqdm=False)
        # (nothing more is frozen, and nothing thawed; frozen objects that die leave the count)
        assert counts and max(counts) <= mine and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

"""The engine one step at a time (LLM.add_request / step / abort_request, over Engine.steps and
Engine.cancel): samples come back as they finish, equal to generate's; cancelled samples free
their slots, leave their K/V cached, keep the tokens they had and count what they cost."""
from __future__ import annotations

import random

import pytest

from tts_engine import LLM, SamplingParams


def fresh(model, **kw) -> LLM:
    return LLM(model, dtype="float32", device="cpu", kv_cache_tokens=kw.pop("kv_cache_tokens", 2048), **kw)


def assert_consistent(llm: LLM) -> None:
    """Nothing runs or waits, no node is locked, and every used slot is the cache's."""
    sched = llm.engine.scheduler
    assert not sched.has_work()
    assert all(n.lock_ref == 0 for n in sched.cache._nodes() if n is not sched.cache.root)
    assert sched.kv_tokens_in_use == sched.cache.num_cached
    assert sorted(sched.free_rows) == list(range(llm.engine.config.max_num_seqs))


def drain(llm: LLM, on_step=None) -> list:
    outs, steps = [], 0
    while llm.has_unfinished_requests():
        got = llm.step()
        outs += got
        steps += 1
        if on_step is not None:
            on_step(steps, got)
    return outs


@pytest.mark.parametrize("overlap", [False, True])
def test_step_returns_samples_as_they_finish_equal_to_generate(tiny_llama, overlap):
    prompts = [[random.randrange(4, 300) for _ in range(random.randrange(3, 20))] for _ in range(3)]
    params = [SamplingParams(n=3, temperature=1.0, max_tokens=4 + 5 * i, ignore_eos=True, seed=11 + i)
              for i in range(3)]
    expected = fresh(tiny_llama).generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    llm = fresh(tiny_llama, overlap=overlap)
    ids = [llm.add_request({"prompt_token_ids": p}, sp) for p, sp in zip(prompts, params)]
    seen: dict[str, list] = {i: [] for i in ids}
    order = []
    for out in drain(llm):
        seen[out.request_id] += out.outputs
        order.append(out.request_id)
        assert out.finished == (len(seen[out.request_id]) == 3)
    assert order == ids                       # shorter max_tokens finish first
    for rid, exp in zip(ids, expected):
        got = sorted(seen[rid], key=lambda c: c.index)
        assert [c.token_ids for c in got] == [c.token_ids for c in exp.outputs]
    assert llm.step() == [] and not llm.has_unfinished_requests()
    assert_consistent(llm)


@pytest.mark.parametrize("overlap", [False, True])
def test_cancelled_samples_free_their_slots_and_keep_their_kv_cached(tiny_llama, overlap):
    prompt = [random.randrange(4, 300) for _ in range(12)]
    sp = SamplingParams(n=4, temperature=1.0, max_tokens=30, ignore_eos=True, seed=5)
    full = fresh(tiny_llama).generate({"prompt_token_ids": prompt}, sp, use_tqdm=False)[0].outputs
    llm = fresh(tiny_llama, overlap=overlap)
    rid = llm.add_request({"prompt_token_ids": prompt}, sp)

    def cancel_at_step_6(step, got):
        if step == 6:
            llm.abort_request(rid, indices=[1, 2])

    outs = drain(llm, cancel_at_step_6)
    by_index = {c.index: c for o in outs for c in o.outputs}
    assert sorted(by_index) == [0, 1, 2, 3]
    for i in (1, 2):
        c = by_index[i]
        assert c.finish_reason == "cancelled" and 0 < len(c.token_ids) < 30
        assert c.token_ids == full[i].token_ids[:len(c.token_ids)]     # what it had, unchanged
    for i in (0, 3):
        assert by_index[i].token_ids == full[i].token_ids and by_index[i].finish_reason == "length"
    assert outs[-1].finished and not outs[0].finished
    # what every sample cost is counted: the outputs' work adds up to the engine's
    assert sum(o.work.flops for o in outs) == llm.stats()["flops"]
    assert sum(o.work.generated_tokens for o in outs) == llm.stats()["generated_tokens"]
    assert_consistent(llm)
    # the cancelled sample's K/V stayed cached: continuing it computes its last token only
    cancelled = by_index[1].token_ids
    llm.reset_stats()
    llm.generate({"prompt_token_ids": prompt + cancelled}, SamplingParams(max_tokens=2, temperature=0),
                 use_tqdm=False)
    assert llm.stats()["computed_prompt_tokens"] == 1


def test_cancel_before_running_a_leader_or_a_waiting_fork(tiny_llama):
    """A request cancelled before its first step, and one sample cancelled while it waits for its
    leader's prompt (room for 2 sequences): the others run as they would have."""
    prompts = [[random.randrange(4, 300) for _ in range(8)] for _ in range(2)]
    sp = SamplingParams(n=3, temperature=1.0, max_tokens=6, ignore_eos=True, seed=2)
    expected = fresh(tiny_llama).generate([{"prompt_token_ids": prompts[1]}], sp, use_tqdm=False)[0]
    llm = fresh(tiny_llama, max_num_seqs=2)
    first = llm.add_request({"prompt_token_ids": prompts[0]}, sp)
    second = llm.add_request({"prompt_token_ids": prompts[1]}, sp)
    llm.abort_request(first)
    llm.abort_request(second, indices=[1])          # a fork waiting on sample 0's prompt
    outs = drain(llm)
    got = {(o.request_id, c.index): c for o in outs for c in o.outputs}
    assert all(got[(first, i)].finish_reason == "cancelled" and got[(first, i)].token_ids == []
               for i in range(3))
    assert got[(second, 1)].finish_reason == "cancelled" and got[(second, 1)].token_ids == []
    for i in (0, 2):
        assert got[(second, i)].token_ids == expected.outputs[i].token_ids
    assert_consistent(llm)


def test_generate_refuses_while_stepped_requests_run(tiny_llama):
    llm = fresh(tiny_llama)
    rid = llm.add_request({"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=3))
    with pytest.raises(RuntimeError, match="add_request"):
        llm.generate({"prompt_token_ids": [5, 6]}, use_tqdm=False)
    llm.abort_request(rid)
    assert [c.finish_reason for o in drain(llm) for c in o.outputs] == ["cancelled"]
    assert llm.generate({"prompt_token_ids": [5, 6]}, SamplingParams(max_tokens=2), use_tqdm=False)


def test_encode_while_stepping_is_refused_before_anything_is_queued(tiny_llama):
    llm = fresh(tiny_llama)
    llm.add_request({"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=4, ignore_eos=True))
    llm.step()
    with pytest.raises(RuntimeError, match="already running"):
        llm.encode([[5, 6, 7, 8]])
    assert len(drain(llm)[0].outputs[0].token_ids) == 4
    assert_consistent(llm)
    assert llm.encode([[5, 6, 7, 8]])[0].shape[0] == 4

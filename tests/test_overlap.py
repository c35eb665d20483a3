"""The overlapped loop (engine.py: step t+1 prepared while step t runs, step t postprocessed while
t+1 runs) against the one-step-at-a-time loop: the same tokens, text, finish reasons and logprobs
for greedy and seeded requests, with forks, stop strings, preemption, chunked prefill, penalties
and the PRM's encode requests. And the runner's slot table: right at every step, filled on the
device for cached contexts."""
from __future__ import annotations

import random
import threading
import time

import pytest

from tts_engine import LLM, PRM, SamplingParams


def outputs(llm: LLM, prompts, params) -> list:
    """Per sample: tokens, text, finish and stop reasons, and the logprobs as floats apart (a batch
    with another row, as the overlapped loop's steps can have, may move their last bits)."""
    out = []
    for r in llm.generate(prompts, params, use_tqdm=False):
        for o in r.outputs:
            lps = [{t: (lp.logprob, lp.rank) for t, lp in e.items()} for e in o.logprobs or []]
            exact = (o.token_ids, o.text, o.finish_reason, o.stop_reason,
                     [{t: rank for t, (_, rank) in e.items()} for e in lps])
            floats = [o.cumulative_logprob] + [v for e in lps for v, _ in e.values()]
            out.append((exact, floats))
    return out


def same(a: list, b: list) -> bool:
    return [x for x, _ in a] == [x for x, _ in b] and all(
        f == pytest.approx(g, rel=1e-5, abs=1e-5) for (_, f), (_, g) in zip(a, b))


def prompts_sharing_a_prefix(n: int, prefix_len: int) -> list[dict]:
    rng = random.Random(random.randrange(1 << 30))
    prefix = [rng.randrange(4, 384) for _ in range(prefix_len)]
    return [{"prompt_token_ids": prefix + [rng.randrange(4, 384) for _ in range(rng.randrange(1, 12))]}
            for _ in range(n)]


CASES = {
    "greedy forks": ({}, dict(n=4, temperature=0, max_tokens=24, ignore_eos=True)),
    "seeded top-p, top-k, logprobs": ({}, dict(n=3, temperature=0.9, top_p=0.9, top_k=50, logprobs=3,
                                               max_tokens=24, ignore_eos=True, seed=11)),
    "stop strings and stop tokens": ({}, dict(n=3, temperature=1.0, max_tokens=40, seed=5, stop=["e", "a b"],
                                              stop_token_ids=list(range(100, 130)))),
    "preemption": (dict(kv_cache_tokens=100),
                   dict(n=2, temperature=1.0, max_tokens=30, ignore_eos=True, seed=2)),
    "chunked prefill": (dict(max_num_batched_tokens=16),
                        dict(n=2, temperature=0, max_tokens=20, ignore_eos=True)),
    "penalties and min_tokens": ({}, dict(n=2, temperature=1.0, max_tokens=20, seed=4, repetition_penalty=1.2,
                                          frequency_penalty=0.3, min_tokens=6, stop_token_ids=[17])),
    "few rows": (dict(max_num_seqs=3), dict(n=4, temperature=1.0, max_tokens=16, seed=9, stop=["o"])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_overlapped_loop_gives_the_synchronous_loops_outputs(tiny_llama, case):
    engine_args, params = CASES[case]
    prompts = prompts_sharing_a_prefix(6, 30)
    runs = []
    for overlap in (False, True):
        llm = LLM(tiny_llama, dtype="float32", device="cpu", **{"kv_cache_tokens": 8192, **engine_args},
                  overlap=overlap)
        runs.append(outputs(llm, prompts, SamplingParams(**params)))
        # a second round on the now cached prompts, as a search's next round
        runs[-1] += outputs(llm, prompts, SamplingParams(**{**params, "max_tokens": 8}))
    assert same(runs[0], runs[1])
    if case == "stop strings and stop tokens":
        reasons = {o[0][3] for o in runs[0]}
        # both kinds of stop happened
        assert reasons & {"e", "a b"} and reasons & set(range(100, 130)), reasons


def test_overlapped_loop_stops_at_smollm2_step_boundaries(smollm2_gguf):
    """A real tokenizer, sampled steps ending in "\\n\\n" as a search generates them."""
    tok_llm = LLM(smollm2_gguf, dtype="float32", device="cpu", overlap=False)
    prompt = tok_llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "Solve step by step: what is 12 * 15 + 7?"}],
        add_generation_prompt=True, tokenize=False)
    params = SamplingParams(n=6, temperature=0.8, max_tokens=48, stop=["\n\n"], seed=3)
    overlapped = LLM(smollm2_gguf, dtype="float32", device="cpu", overlap=True)
    a, b = outputs(tok_llm, [prompt], params), outputs(overlapped, [prompt], params)
    assert same(a, b)
    assert any(o[0][3] == "\n\n" for o in a)


def test_prm_scores_the_same_overlapped(tiny_llama, tmp_path):
    from test_prm import STEPS, make_family
    folder, _ = make_family("qwen2.5-math-prm", tmp_path)
    scores = []
    for overlap in (False, True):
        prm = PRM(str(folder), dtype="float32", device="cpu", kv_cache_tokens=8192)
        prm.engine.overlap = overlap
        trajectories = [STEPS[:n] for n in range(1, 6)]
        scores.append([prm.score("What is (2 + 3) * 2?", trajectories),
                       prm.score("What is (2 + 3) * 2?", [STEPS[:5] + [STEPS[0]]])])
    assert scores[0] == scores[1]


def test_the_host_prepares_the_next_step_while_the_device_runs(tiny_llama):
    """With a device step that takes 30 ms, step t+1 is scheduled and prepared before step t ends
    (not a timing bound: the order of events)."""
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=4096, overlap=True)
    runner, events, lock = llm.engine.runner, [], threading.Lock()
    execute, prepare = runner.execute, runner.prepare

    def slow_execute(prep):
        out = execute(prep)
        time.sleep(0.03)
        with lock:
            events.append(("executed", prep.step))
        return out

    def logged_prepare(batch, eos):
        prep = prepare(batch, eos)
        with lock:
            prep.step = sum(e[0] == "prepared" for e in events)
            events.append(("prepared", prep.step))
        return prep

    runner.execute, runner.prepare = slow_execute, logged_prepare
    llm.generate(prompts_sharing_a_prefix(4, 20), SamplingParams(n=2, max_tokens=12, ignore_eos=True),
                 use_tqdm=False)
    # one step at a time would read prepared 0, executed 0, prepared 1, executed 1, ...; overlapped,
    # step k + 1 is prepared before step k is done (a step that needs the host's token history,
    # none here, would wait)
    steps = sum(e[0] == "executed" for e in events)
    assert steps >= 12
    for k in range(steps - 1):
        assert events.index(("prepared", k + 1)) < events.index(("executed", k)), events


@pytest.mark.parametrize("engine_args", [dict(kv_cache_tokens=250, max_num_batched_tokens=32),
                                         dict(kv_cache_tokens=8192)])
def test_slot_table_rows_match_the_sequences_at_every_step(tiny_llama, engine_args):
    """Forks, preemption, chunked prefill and a round resubmitted on cached prefixes: after every
    step, each sequence's table row lists exactly its slots."""
    llm = LLM(tiny_llama, dtype="float32", device="cpu", overlap=False, **engine_args)
    runner = llm.engine.runner
    execute, checked = runner.execute, [0]

    def checked_execute(prep):
        out = execute(prep)
        b = prep.batch
        for seq in b.decode + [c.seq for c in b.prefill] + [s for f in b.forks for s in f.siblings]:
            n = seq.num_computed
            assert runner.slot_table[seq.row, :n].tolist() == seq.slots[:n]
            checked[0] += 1
        return out

    runner.execute = checked_execute
    prompts = prompts_sharing_a_prefix(5, 40)
    params = SamplingParams(n=3, temperature=1.0, max_tokens=20, ignore_eos=True, seed=1)
    first = llm.generate(prompts, params, use_tqdm=False)
    assert (llm.stats()["preemptions"] > 0) == (engine_args["kv_cache_tokens"] == 250)
    # the next round: each sample's text resubmitted, all of it cached but its last token
    again = [{"prompt_token_ids": r.prompt_token_ids + list(o.token_ids)} for r in first for o in r.outputs]
    llm.generate(again, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert checked[0] > 100


def test_rows_of_a_cached_context_are_filled_on_the_device(tiny_llama):
    """16 requests on a cached 400-token prompt upload the prompt's slot ids once (the tree node's
    device copy), then only the slots of the tokens they compute: not 16 rows of 400."""
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=8192, overlap=False)
    runner = llm.engine.runner
    prompt = [random.randrange(4, 384) for _ in range(400)]
    llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=1), use_tqdm=False)
    before = runner.table_entries_written
    requests = [{"prompt_token_ids": prompt + [5 + i]} for i in range(16)]
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    outs = llm.generate(requests, params, use_tqdm=False)
    assert runner.table_entries_written - before == 400 + 16 * 1 + 16 * 2    # node, new tokens, decodes
    alone = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=8192, enable_prefix_caching=False)
    expected = alone.generate(requests, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in expected]


def test_a_penalized_request_beside_requests_that_stop(tiny_llama):
    """A request whose draws need its token history (repetition penalty) in the batch with requests
    that stop often: the step in flight is postprocessed before the next is scheduled, so no row of
    a sequence that just stopped is prepared."""
    prompts = prompts_sharing_a_prefix(4, 20)
    params = [SamplingParams(max_tokens=20, repetition_penalty=1.1, ignore_eos=True)] + [
        SamplingParams(n=2, temperature=1.0, seed=i, max_tokens=20, stop_token_ids=list(range(4, 300)))
        for i in range(3)]
    runs = []
    for overlap in (False, True):
        llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=4096, overlap=overlap)
        runs.append(outputs(llm, prompts, params))
    assert same(runs[0], runs[1])
    assert sum(o[0][2] == "stop" for o in runs[0]) >= 4


def test_an_overlapped_engine_is_freed(tiny_llama):
    """Its worker thread holds nothing of it: dropping the LLM frees the model and the KV pool (a
    study loads one policy after another)."""
    import gc
    import weakref
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=1024, overlap=True)
    llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=4), use_tqdm=False)
    engine = weakref.ref(llm.engine)
    del llm
    gc.collect()
    assert engine() is None

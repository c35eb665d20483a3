"""The scheduler's host time per step with a full KV pool, without a model: the host side of a study
at GPU scale (millions of KV slots, 2k-token prompts x 16 samples).

    python benchmarks/bench_scheduler.py [--slots 3000000] [--prompt 2048] [--samples 16]
                                         [--tokens 256] [--requests 16] [--steps 200] [--json]

The pool is first filled with cached trajectories, unlocked as finished requests leave them (a
prompt, then `samples` branches of `tokens` tokens each, every one a leaf of the radix tree).
Then `requests` requests run at a time, each a fresh prompt with `samples` samples; every step
schedules, forks, appends a token to each sampling sequence and finishes those that reach
`tokens`, and a finished request is replaced by a new one. Every token needs a slot, so the
scheduler evicts all along. Prints ms per step (schedule + bookkeeping), the tree's node count,
and the cache's eviction work per step (heap entries examined; absent before the incremental LRU).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from tts_engine.config import EngineConfig
from tts_engine.engine.scheduler import Scheduler
from tts_engine.engine.sequence import Sequence
from tts_engine.sampling_params import SamplingParams


def fill(sched: Scheduler, rng: random.Random, prompt: int, samples: int, tokens: int) -> None:
    cache, alloc = sched.cache, sched.allocator
    per = prompt + samples * tokens
    while alloc.num_free >= 2 * per:
        base = [rng.randrange(1 << 20) for _ in range(prompt)]
        base_slots = alloc.alloc(prompt)
        cache.insert(base, base_slots)
        for _ in range(samples):
            branch = [rng.randrange(1 << 20) for _ in range(tokens)]
            cache.insert(base + branch, base_slots + alloc.alloc(tokens))


def run(slots: int, prompt: int, samples: int, tokens: int, requests: int, steps: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    sched = Scheduler(EngineConfig(model="none", max_num_seqs=requests * samples), slots, prompt + tokens + 1)
    fill(sched, rng, prompt, samples, tokens)
    params = SamplingParams(n=samples, max_tokens=tokens)
    next_id = [0]

    def add_request():
        ids = [rng.randrange(1 << 20) for _ in range(prompt)]
        group = [Sequence(next_id[0] + k, next_id[0], k, ids, params, 0) for k in range(samples)]
        next_id[0] += samples
        sched.add(group)

    for _ in range(requests):
        add_request()
    times, work, nodes = [], [], sched.cache.num_nodes if hasattr(sched.cache, "num_nodes") else None
    for _ in range(steps):
        work0 = getattr(sched.cache, "work", 0)
        t = time.perf_counter()
        batch = sched.schedule()
        for seq in batch.sampling:      # what the engine does with a sampled token
            seq.in_flight -= 1
            seq.token_ids.append(rng.randrange(1 << 20))
            if seq.num_output_tokens >= tokens:
                sched.finish(seq)
                if seq.index == 0:
                    add_request()
        times.append(time.perf_counter() - t)
        work.append(getattr(sched.cache, "work", 0) - work0)
    return {"ms_per_step": 1e3 * statistics.mean(times), "ms_per_step_max": 1e3 * max(times),
            "nodes_at_start": nodes, "work_per_step": work, "free_slots": sched.allocator.num_free}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=3_000_000)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print the result as JSON (for tests)")
    args = ap.parse_args()
    r = run(args.slots, args.prompt, args.samples, args.tokens, args.requests, args.steps)
    if args.json:
        print(json.dumps(r))
        return
    work = r["work_per_step"]
    print(f"{args.slots:,} slots, prompts of {args.prompt} x {args.samples} samples of {args.tokens} tokens, "
          f"{args.requests} requests at a time, {args.steps} steps")
    print(f"host ms per step: mean {r['ms_per_step']:.2f}, max {r['ms_per_step_max']:.2f}; "
          f"tree nodes at start: {r['nodes_at_start']}; eviction work per step: mean "
          f"{statistics.mean(work):.1f}, max {max(work)}")


if __name__ == "__main__":
    main()

"""Host work per decode step of the real engine: the part of a step that a GPU waits for while the
loop is synchronous. The model's forward costs nothing here (it returns zeros of the right shape),
cascade attention planning is on (its default threshold), and stop strings are matched (so the
detokenizer runs), as in a search. Two shapes of a search round, at 64 / 256 / 1024 sequences and
2k / 8k-token contexts:

  forked       one request whose n samples fork from a fresh prompt (best-of-N, a first round);
  resubmitted  n requests of one sample each on a cached prefix: the prompt plus each one's own
               first step, as every later round of a beam search submits them.

Per decode step, by phase (and apart, the host time of the steps that admit the round's requests:
prefill of what the cache lacks, and the slot-table rows of cached contexts):
  schedule     Scheduler.schedule
  plan         cascade levels (engine/cascade.py)
  prepare      the runner's host half (ModelRunner.prepare) without the plan
  detokenize   incremental detokenization for the stop strings
  postprocess  the rest of Engine._postprocess: appending, stop checks, finishing
  host         all of the above: the loop's work on the host
  device       the runner's device half (ModelRunner.execute: upload, slot-table writes, forward,
               sampling, the copy back); on this CPU it runs on the engine's worker thread
  forward      the model call inside it: zero here, or --forward-ms on a sleeping call
  wall         per decode step, end to end

The overlapped loop (the default) hides the host's work behind the device's: its wall is about
max(host, device) where one step at a time (--sync) pays host + device.

    python benchmarks/bench_host.py [--seqs 64 256 1024] [--contexts 2048 8192] [--steps 16]
                                    [--forward-ms 0] [--sync] [--device cpu|cuda] [--json FILE]
"""
from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections import defaultdict

import torch

from random_model import save_random_model
from tts_engine import LLM, SamplingParams
from tts_engine.engine.detokenizer import IncrementalDetokenizer

PHASES = ("schedule", "plan", "prepare", "detokenize", "postprocess", "host", "device", "forward", "wall")


class Phases:
    """Wraps the engine's parts with timers, each time booked to the batch it works on (the
    overlapped loop works on two at once: one on the host, one on the device)."""

    def __init__(self, llm: LLM, forward_ms: float):
        engine, runner = llm.engine, llm.engine.runner
        self.batches: list[dict] = []             # per batch: its seconds by phase, and what it was
        self.current: dict | None = None          # the batch the host works on now
        sched, prepare, execute = engine.scheduler.schedule, runner.prepare, runner.execute
        post = engine._postprocess
        plan, self._detok = runner.cascade_levels, IncrementalDetokenizer.step
        model = runner.model

        def book(name, fn, batch):
            t = time.perf_counter()
            out = fn()
            batch.bench_row[name] += time.perf_counter() - t
            return out

        def timed_schedule():
            t = time.perf_counter()
            batch = sched()
            batch.bench_row = row = defaultdict(float)      # (an attribute: ids of freed batches recur)
            row["schedule"] = time.perf_counter() - t
            row["admission"] = not (batch.decode and not batch.prefill)
            self.batches.append(row)
            return batch

        def timed_prepare(batch, eos):
            self.current = batch.bench_row
            return book("prepare", lambda: prepare(batch, eos), batch)

        def timed_post(batch, out):
            self.current = batch.bench_row
            return book("postprocess", lambda: post(batch, out), batch)

        def timed_execute(prep):
            self.forward = 0.0
            out = book("device", lambda: execute(prep), prep.batch)
            prep.batch.bench_row["forward"], prep.batch.bench_row["end"] = self.forward, time.perf_counter()
            return out

        def on_host(name, fn):
            def wrapper(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.current[name] += time.perf_counter() - t
            return wrapper

        def zero_forward(input_ids, positions, meta):
            t = time.perf_counter()
            if forward_ms:
                time.sleep(forward_ms / 1e3)      # a forward on the device, as the host sees it
            out = torch.zeros(input_ids.shape[0], model.cfg.hidden_size, dtype=torch.float32,
                              device=input_ids.device)
            self.forward += time.perf_counter() - t
            return out

        self.forward = 0.0
        engine.scheduler.schedule, runner.prepare = timed_schedule, timed_prepare
        engine._postprocess = timed_post
        runner.execute, model.forward = timed_execute, zero_forward
        runner.cascade_levels = on_host("plan", plan)
        IncrementalDetokenizer.step = on_host("detokenize", self._detok)

    def close(self) -> None:
        IncrementalDetokenizer.step = self._detok

    def mean_ms(self, skip: int) -> dict[str, float]:
        """Decode steps' mean ms by phase (the first `skip` left out), and the host ms of the steps
        that admitted the round's requests (prefill), summed."""
        rows = [r for r in self.batches if "end" in r]
        for r in rows:
            r["prepare"] -= r.get("plan", 0.0)
            r["postprocess"] -= r.get("detokenize", 0.0)
            r["host"] = sum(r.get(k, 0.0) for k in PHASES[:5])
        decode = [r for r in rows if not r["admission"]][skip:]
        out = {k: 1e3 * sum(r.get(k, 0.0) for r in decode) / max(len(decode), 1) for k in PHASES}
        ends = [r["end"] for r in decode]
        out["wall"] = 1e3 * (ends[-1] - ends[0]) / max(len(ends) - 1, 1) if len(ends) > 1 else 0.0
        out["admission"] = 1e3 * sum(r["host"] for r in rows if r["admission"])
        return out


def model_folder(folder: str, max_len: int) -> str:
    save_random_model(folder, dict(architectures=["LlamaForCausalLM"], vocab_size=258, hidden_size=16,
                                   intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, head_dim=8, rms_norm_eps=1e-5,
                                   max_position_embeddings=max_len, tie_word_embeddings=True,
                                   bos_token_id=0, eos_token_id=1), dtype=torch.float32)
    return folder


def measure(folder: str, scenario: str, seqs: int, context: int, steps: int, forward_ms: float,
            overlap: bool, device: str = "cpu") -> dict:
    gc.collect()      # the last case's engine, collected now rather than during this one's steps
    # (eager: a CUDA graph would replay the real model instead of the stand-in forward)
    llm = LLM(folder, dtype="float32", device=device, max_num_seqs=seqs, seed=0, overlap=overlap,
              kv_cache_tokens=context + seqs * (2 * steps + 80) + 4096, enforce_eager=True)
    g = torch.Generator().manual_seed(context + seqs)
    prompt = torch.randint(2, 258, (context,), generator=g).tolist()

    def params(**changes) -> SamplingParams:
        return SamplingParams(**{"temperature": 1.0, "max_tokens": steps + 4, "ignore_eos": True,
                                 "stop": ["\n\n"], "seed": 1, **changes})

    if scenario == "forked":
        phases = Phases(llm, forward_ms)
        llm.generate({"prompt_token_ids": prompt}, params(n=seqs), use_tqdm=False)
    else:
        first = llm.generate({"prompt_token_ids": prompt}, params(n=seqs, max_tokens=32), use_tqdm=False)
        beams = [{"prompt_token_ids": prompt + list(c.token_ids)} for c in first[0].outputs]
        phases = Phases(llm, forward_ms)
        llm.generate(beams, [params(seed=i) for i in range(len(beams))], use_tqdm=False)
    phases.close()
    return {"scenario": scenario, "seqs": seqs, "context": context, "overlap": overlap,
            "steps": len(phases.batches), **phases.mean_ms(skip=2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--contexts", nargs="+", type=int, default=[2048, 8192])
    ap.add_argument("--steps", type=int, default=16,
                    help="decode steps per case (the first 2 are not counted)")
    ap.add_argument("--forward-ms", type=float, default=0.0, help="the forward's time, a sleep")
    ap.add_argument("--sync", action="store_true", help="also run one step at a time, for comparison")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: the device half on a GPU")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    rows = []
    print(f"{'scenario':<12}{'seqs':>6}{'context':>8}{'loop':>9}" + "".join(f"{p:>12}" for p in PHASES)
          + f"{'admission':>11}   (ms per decode step; admission: the prefill steps' host ms, summed)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(tmp, max(args.contexts) + 4 * args.steps + 256)
        for scenario in ("forked", "resubmitted"):
            for context in args.contexts:
                for seqs in args.seqs:
                    for overlap in (True, False) if args.sync else (True,):
                        r = measure(folder, scenario, seqs, context, args.steps, args.forward_ms, overlap,
                                    args.device)
                        rows.append(r)
                        cells = "".join(f"{r[p]:>12.2f}" for p in PHASES) + f"{r['admission']:>11.2f}"
                        loop = "overlap" if overlap else "sync"
                        print(f"{scenario:<12}{seqs:>6}{context:>8}{loop:>9}{cells}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

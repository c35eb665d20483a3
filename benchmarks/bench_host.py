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
  plan         cascade levels
  prepare      ModelRunner.prepare without the plan
  sample       the sampler's tensor work (kernels on a GPU, CPU compute here)
  detokenize   incremental detokenization for the stop strings
  postprocess  the rest of Engine.step: the LM head on the sampled rows, forks, the one copy back,
               appending, stop checks, finishing
  host         all of the above
  forward      the model call: zero here, or --forward-ms on a sleeping call, which today's
               synchronous loop adds to the wall

    python benchmarks/bench_host.py [--seqs 64 256 1024] [--contexts 2048 8192] [--steps 16]
                                    [--forward-ms 0] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict

import torch

from tts_engine import LLM, SamplingParams
from tts_engine.engine.detokenizer import IncrementalDetokenizer
from tts_engine.random_model import save_random_model

PHASES = ("schedule", "plan", "prepare", "sample", "detokenize", "postprocess", "host", "forward", "wall")


class Phases:
    """Wraps the engine's parts with timers; `step()` gives one decode step's seconds by phase."""

    def __init__(self, llm: LLM, forward_ms: float):
        engine, runner = llm.engine, llm.engine.runner
        self.now: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.decode_only = False
        timed = self._timed
        engine.scheduler.schedule = timed("schedule", engine.scheduler.schedule)
        runner.cascade_levels = timed("plan", runner.cascade_levels)
        runner.prepare = timed("prepare", runner.prepare)
        engine.sampler = timed("sample", engine.sampler)
        self._detok = IncrementalDetokenizer.step
        IncrementalDetokenizer.step = timed("detokenize", self._detok)
        model = runner.model

        def zero_forward(input_ids, positions, meta):
            if forward_ms:
                time.sleep(forward_ms / 1e3)      # a forward on the device, as the host sees it
            return torch.zeros(input_ids.shape[0], model.cfg.hidden_size, dtype=torch.float32)

        self._forward = model.forward
        model.forward = timed("forward", zero_forward)
        run, step = runner.run, engine.step

        def tracked_run(batch):
            self.decode_only = bool(batch.decode) and not batch.prefill
            return run(batch)

        def timed_step():
            self.now.clear()
            t = time.perf_counter()
            out = step()
            wall = time.perf_counter() - t
            p = dict(self.now)
            p["admission"] = not self.decode_only      # a step with prefill: it admits requests
            p["prepare"] = p.get("prepare", 0.0) - p.get("plan", 0.0)
            p["wall"] = wall
            p["host"] = wall - p.get("forward", 0.0)
            named = ("schedule", "plan", "prepare", "sample", "detokenize")
            p["postprocess"] = p["host"] - sum(p.get(k, 0.0) for k in named)
            self.steps.append(p)
            return out

        runner.run, engine.step = tracked_run, timed_step

    def _timed(self, name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.now[name] += time.perf_counter() - t
        return wrapper

    def close(self) -> None:
        IncrementalDetokenizer.step = self._detok

    def mean_ms(self, skip: int) -> dict[str, float]:
        """Decode steps' mean ms by phase (the first `skip` left out), and the host ms of the steps
        that admitted the round's requests (prefill), summed."""
        decode = [s for s in self.steps if not s["admission"]]
        steps = decode[skip:] or decode
        out = {k: 1e3 * sum(s.get(k, 0.0) for s in steps) / max(len(steps), 1) for k in PHASES}
        out["admission"] = 1e3 * sum(s["host"] for s in self.steps if s["admission"])
        return out


def model_folder(folder: str, max_len: int) -> str:
    save_random_model(folder, dict(architectures=["LlamaForCausalLM"], vocab_size=258, hidden_size=16,
                                   intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, head_dim=8, rms_norm_eps=1e-5,
                                   max_position_embeddings=max_len, tie_word_embeddings=True,
                                   bos_token_id=0, eos_token_id=1), dtype=torch.float32)
    return folder


def measure(folder: str, scenario: str, seqs: int, context: int, steps: int, forward_ms: float) -> dict:
    llm = LLM(folder, dtype="float32", device="cpu", max_num_seqs=seqs, seed=0,
              kv_cache_tokens=context + seqs * (2 * steps + 80) + 4096)
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
    return {"scenario": scenario, "seqs": seqs, "context": context, "steps": len(phases.steps),
            **phases.mean_ms(skip=2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--contexts", nargs="+", type=int, default=[2048, 8192])
    ap.add_argument("--steps", type=int, default=16,
                    help="decode steps per case (the first 2 are not counted)")
    ap.add_argument("--forward-ms", type=float, default=0.0, help="the forward's time, a sleep")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    rows = []
    print(f"{'scenario':<12}{'seqs':>6}{'context':>8}  " + "".join(f"{p:>12}" for p in PHASES)
          + f"{'admission':>11}   (ms per decode step; admission: the prefill steps' host ms, summed)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(tmp, max(args.contexts) + 4 * args.steps + 256)
        for scenario in ("forked", "resubmitted"):
            for context in args.contexts:
                for seqs in args.seqs:
                    r = measure(folder, scenario, seqs, context, args.steps, args.forward_ms)
                    rows.append(r)
                    cells = "".join(f"{r[p]:>12.2f}" for p in PHASES) + f"{r['admission']:>11.2f}"
                    print(f"{scenario:<12}{seqs:>6}{context:>8}  {cells}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

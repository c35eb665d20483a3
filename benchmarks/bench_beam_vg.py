"""Beam search that verifies less: beam search against beam-vg (score and select every g steps,
VG-Search) and partial-step rejection (score running steps every r tokens, reject those more than a
margin below their tree's best, ER-PRM's idea), in one run on the same problems and seeds.
SmolLM2-135M as the policy and, with a random value head in Skywork's layout, as the PRM (the
PRM's judgement is not the point: what each variant spends is); float32 on the CPU.

    python benchmarks/bench_beam_vg.py [--problems 6] [--n 16] [--max-steps 6] [--step-tokens 48] \
        [--g 2] [--reject-every 16] [--reject-margin 0.05]

Prints, per variant, the policy's and the PRM's FLOPs and tokens, the engine's wall time, and each
as a fraction of beam search's.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import torch

from bench_prm import skywork_smollm2
from tts_engine import LLM, PRM
from tts_engine.search import SearchConfig, beam_search, beam_vg
from tts_engine.tasks import load_dataset
from tts_engine.work import Work

DATA = os.path.join(os.path.dirname(__file__), "../../shared/data/math500.jsonl")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=6)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--step-tokens", type=int, default=48)
    ap.add_argument("--g", type=int, default=2)
    ap.add_argument("--reject-every", type=int, default=16)
    ap.add_argument("--reject-margin", type=float, default=0.05)
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    problems = load_dataset(args.data, args.problems)
    base = SearchConfig(n=args.n, beam_width=4, max_steps=args.max_steps, step_tokens=args.step_tokens,
                        prompt_style="qwen", seed=0, verify_every=args.g, reject_margin=args.reject_margin)
    rejecting = dataclasses.replace(base, reject_every=args.reject_every)
    variants = [("beam search", beam_search, base), (f"beam-vg g={args.g}", beam_vg, base),
                (f"beam, reject every {args.reject_every}", beam_search, rejecting),
                (f"beam-vg g={args.g}, reject every {args.reject_every}", beam_vg, rejecting)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        skywork_smollm2(folder)
        llm = LLM(folder, dtype="float32", device="cpu")
        prm = PRM(folder, kind="skywork", dtype="float32", device="cpu")
        beam_search(llm, prm, problems[:1], dataclasses.replace(base, max_steps=1))      # warm-up
        for name, method, cfg in variants:
            llm.reset_prefix_cache()
            prm.reset_prefix_cache()
            t = time.perf_counter()
            results = method(llm, prm, problems, cfg)
            seconds = time.perf_counter() - t
            work = {side: sum((getattr(r, f"{side}_work") for r in results), start=Work())
                    for side in ("policy", "prm")}
            candidates = [c for r in results for c in r.candidates]
            steps = sum(len(c.steps) for c in candidates) / len(candidates)
            rows.append((name, work["policy"], work["prm"], seconds, steps))
    print(f"\nN={args.n}, M=4, <= {args.max_steps} steps of <= {args.step_tokens} tokens, {len(problems)} "
          f"MATH-500 problems; SmolLM2-135M policy and Skywork-layout PRM (random value head), float32, "
          f"{torch.get_num_threads()} threads; margin {args.reject_margin}")
    print(f"{'variant':<34}{'policy GFLOPs':>14}{'PRM GFLOPs':>12}{'policy tok':>11}{'PRM tok':>9}"
          f"{'seconds':>9}{'steps/cand':>11}{'policy':>8}{'PRM':>7}{'time':>7}")
    _, p0, r0, s0, _ = rows[0]
    for name, p, r, s, steps in rows:
        print(f"{name:<34}{p.flops / 1e9:>14.1f}{r.flops / 1e9:>12.1f}{p.generated_tokens:>11}"
              f"{r.computed_tokens:>9}{s:>9.1f}{steps:>11.2f}{p.flops / p0.flops:>8.2f}"
              f"{r.flops / r0.flops:>7.2f}{s / s0:>7.2f}")


if __name__ == "__main__":
    main()

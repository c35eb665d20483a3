"""The sampler's share of a decode step: a tiny random-weight Llama with SmolLM2's 49k vocabulary
decoding 256 rows (temperature 0.7, and top-p 0.95), on the CPU. Prints ms per step and in the
sampler.

    python benchmarks/bench_sampler.py [--rows 256] [--vocab 49152] [--tokens 16]
"""
from __future__ import annotations

import argparse
import importlib
import tempfile
import time

import torch

from random_model import save_random_model
from tts_engine import LLM, SamplingParams


def timed_sampler(spent: list[float]) -> None:
    """Time every call of the step loop's sampler: `Sampler.__call__` (tts_engine.engine.sampler),
    or the `sample` function the step loop of the code before the engine-house change imported
    into tts_engine.engine.llm, so the same script times old and new code."""
    mod = importlib.import_module("tts_engine.engine.sampler")
    owner, name = (mod.Sampler, "__call__") if hasattr(mod, "Sampler") else \
        (importlib.import_module("tts_engine.engine.llm"), "sample")
    real = getattr(owner, name)

    def timed(*a, **k):
        t = time.perf_counter()
        r = real(*a, **k)
        spent.append(time.perf_counter() - t)
        return r

    setattr(owner, name, timed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    cfg = dict(
        architectures=["LlamaForCausalLM"], vocab_size=args.vocab, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    spent: list[float] = []
    timed_sampler(spent)
    print(f"{args.rows} rows x {args.vocab} vocabulary, tiny Llama (2 layers, hidden 64), float32, "
          f"{torch.get_num_threads()} threads")
    print(f"{'sampling':<22}{'steps':>6}{'ms/step':>9}{'sampler ms':>12}{'share':>8}")
    with tempfile.TemporaryDirectory() as folder:
        save_random_model(folder, cfg, seed=0, dtype=torch.float32, std=0.5)
        llm = LLM(folder, dtype="float32", device="cpu", max_num_seqs=args.rows)
        prompt = {"prompt_token_ids": list(range(2, 34))}
        for name, extra in (("temperature 0.7", {}), ("+ top-p 0.95", {"top_p": 0.95}), ("greedy", None)):
            sp = SamplingParams(n=args.rows, max_tokens=args.tokens, ignore_eos=True, seed=0,
                                **({"temperature": 0.0} if extra is None else {"temperature": 0.7, **extra}))
            llm.generate(prompt, SamplingParams(n=args.rows, max_tokens=2, ignore_eos=True))   # warm-up
            spent.clear()
            steps0 = llm.stats()["steps"]
            t = time.perf_counter()
            llm.generate(prompt, sp)
            dt = time.perf_counter() - t
            steps = llm.stats()["steps"] - steps0
            print(f"{name:<22}{steps:>6}{1e3 * dt / steps:>9.1f}{1e3 * sum(spent) / steps:>12.1f}"
                  f"{sum(spent) / dt:>8.0%}", flush=True)


if __name__ == "__main__":
    main()

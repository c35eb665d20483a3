"""The real search workload on one GPU: beam search and DVTS through the study's own code (one
replica, as `python -m tts_engine.run` drives it: a policy and a PRM on one device at 0.45 / 0.45
memory shares, cold caches per unit) on random weights of Llama-3.2-1B (the policy) and
Qwen2.5-1.5B (the PRM, Skywork layout), a few MATH-500-shaped problems at N = 64, steps of about
100 tokens ending at "\\n\\n" (random_model.py's `paragraph` shapes the LM head so), up to 2048
tokens a step as in the recipe. Each method runs twice untimed on another problem first, as deep
as the timed run (compiles and graph capture stay out of the timed window), then once timed. Per
method it prints:

- policy tokens/s and problems/hour;
- per engine step (policy and PRM apart): wall ms (Engine.run over its steps), the device half's
  window on the GPU (CUDA events around ModelRunner.execute: upload, forward, sampling, the copy
  back; on the CPU its wall time), the device's idle ms (wall minus that: host work the overlapped
  loop did not hide), and host-device syncs (torch.cuda.set_sync_debug_mode);
- KV pool tokens and peak use, torch.cuda.max_memory_reserved, the Triton cache's size;
- a roofline for the policy's decode steps (what a memory-bound step must read), from what
  they read: weights (the LM head in full, embedding rows gathered) plus either every sequence's
  whole context (plain paged) or each KV slot once (a perfect shared-prefix read), at the measured
  device-to-device copy bandwidth; and the measured rate as a share of the shared-once bound.

    python benchmarks/bench_workload.py [--problems 4] [--n 64] [--max-steps 4]
    python benchmarks/bench_workload.py --smoke      # the same code on the CPU, tiny shapes
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace

import torch

from bench_kernels import copy_bandwidth
from random_model import LLAMA_3_2_1B, QWEN2_5_1_5B, save_random_model
from tts_engine.replica import Replica, Settings, Unit
from tts_engine.search import SearchConfig
from tts_engine.tasks.data import Problem

WORDS = ("let", "the", "sum", "of", "integers", "find", "value", "triangle", "circle", "radius", "prime",
         "x", "y", "=", "+", "2", "3", "7", "\\frac{1}{2}", "$", "such", "that", "real", "number", "how",
         "many")


def math500_shaped(count: int, seed: int) -> list[Problem]:
    """Problems of MATH-500's length (about 200 characters, 60 to 400), from a word list: the
    random policy reads none of them, only their lengths matter."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        size = int(min(400, max(60, rng.lognormvariate(5.2, 0.5))))
        text = ""
        while len(text) < size:
            text += rng.choice(WORDS) + " "
        out.append(Problem(f"s{seed}-{i}", text.strip() + "?", "0"))
    return out


@dataclass
class Meter:
    """Times one engine from outside (its loop and its device half wrapped, nothing changed)."""
    cuda: bool
    steps: int = 0
    wall: float = 0.0                 # seconds in Engine.run
    decode_wall: float = 0.0          # of which in the device half of steps that only decode
    audit: float = 0.0                # seconds spent reading what the decode steps read (not counted)
    forward: float = 0.0              # seconds of the device half: GPU window on CUDA, wall on the CPU
    decode_steps: list = field(default_factory=list)   # (sequences, context tokens, unique slots)
    events: list = field(default_factory=list)

    def attach(self, engine, audit_every: int = 8) -> None:
        run, execute = engine.run, engine.runner.execute

        def timed_run(*args, **kwargs):
            audit = self.audit
            t = time.perf_counter()
            run(*args, **kwargs)
            if self.cuda:
                torch.cuda.synchronize()
            self.wall += time.perf_counter() - t - (self.audit - audit)    # the audit is ours

        def timed_execute(prep):
            batch, decode_only = prep.batch, bool(prep.batch.decode) and not prep.batch.prefill
            self.steps += 1
            if decode_only:
                t = time.perf_counter()
                seqs, unique = batch.decode, None
                if len(self.decode_steps) % audit_every == 0:
                    unique = len(set().union(*(s.slots[:n] for s, n in zip(seqs, batch.decode_lens))))
                self.decode_steps.append((len(seqs), sum(batch.decode_lens), unique))
                self.audit += time.perf_counter() - t
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = execute(prep)
                end.record()
                self.events.append((start, end, decode_only))
                return out
            t = time.perf_counter()
            out = execute(prep)
            self.forward += (seconds := time.perf_counter() - t)
            self.decode_wall += seconds if decode_only else 0.0
            return out

        engine.run, engine.runner.execute = timed_run, timed_execute

    def settle(self) -> None:
        self.forward += sum(s.elapsed_time(e) for s, e, _ in self.events) / 1e3
        self.decode_wall += sum(s.elapsed_time(e) for s, e, decode in self.events if decode) / 1e3
        self.events.clear()

    def per_step(self) -> str:
        n = max(self.steps, 1)
        return (f"{self.steps:>6} steps {self.wall / n * 1e3:8.2f} ms wall "
                f"{self.forward / n * 1e3:8.2f} ms device half "
                f"{max(self.wall - self.forward, 0) / n * 1e3:8.2f} ms device idle")


def triton_cache() -> str:
    folder = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    return f"{len(files)} files, {sum(os.path.getsize(f) for f in files) / 2**20:.1f} MiB"


def roofline(meter: Meter, engine, bandwidth: float) -> tuple[float, float]:
    """Decode tokens/s bounds from the policy's decode steps: every sequence reading its whole
    context (plain paged), and each KV slot read once per step (the audited steps' ratio of unique
    slots to slots read, applied to all)."""
    cfg = engine.model_config
    size = next(engine.model.parameters()).element_size()
    weights = sum(p.numel() for n, p in engine.model.named_parameters() if "embed_tokens" not in n) * size
    if cfg.tie_word_embeddings:           # the LM head is the embedding, read in full
        weights += cfg.vocab_size * cfg.hidden_size * size
    kv = 2 * cfg.num_layers * cfg.kv_size * size
    audited = [(c, u) for _, c, u in meter.decode_steps if u is not None]
    unique = sum(u for _, u in audited) / max(sum(c for c, _ in audited), 1)
    tokens = sum(b for b, _, _ in meter.decode_steps)
    plain = sum(weights + c * kv for _, c, _ in meter.decode_steps) / bandwidth
    once = sum(weights + c * unique * kv for _, c, _ in meter.decode_steps) / bandwidth
    return tokens / max(plain, 1e-12), tokens / max(once, 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--step-tokens", type=int, default=2048, help="the recipe's cap on a step")
    ap.add_argument("--paragraph", type=int, default=100, help="mean step length the random policy writes")
    ap.add_argument("--methods", nargs="+", default=["beam", "dvts"])
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU: tiny models, N=8")
    args = ap.parse_args()
    policy_cfg, prm_cfg, device, dtype = dict(LLAMA_3_2_1B), dict(QWEN2_5_1_5B), "cuda", "bfloat16"
    if args.smoke:
        tiny = dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, vocab_size=1024,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32)
        policy_cfg.update(tiny)
        prm_cfg.update(tiny, num_attention_heads=6, num_key_value_heads=1)
        args.problems, args.n, args.max_steps, args.paragraph = 2, 8, 2, 20
        device, dtype = "cpu", "float32"
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke on a CPU")
    bandwidth = copy_bandwidth(device, 1 << 30 if cuda else 1 << 24)
    cfg = SearchConfig(n=args.n, beam_width=args.beam_width, temperature=0.7, top_p=1.0,
                       max_steps=args.max_steps, step_tokens=args.step_tokens,
                       max_tokens=args.step_tokens * args.max_steps, seed=0)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"{name}; {dtype}; copy bandwidth {bandwidth / 1e9:.0f} GB/s; N={args.n}, beam width "
          f"{args.beam_width}, {args.problems} problems, up to {args.max_steps} steps of ~{args.paragraph} "
          f"tokens",
          flush=True)
    with tempfile.TemporaryDirectory() as folder:
        policy, prm = os.path.join(folder, "policy"), os.path.join(folder, "prm")
        torch_dtype = getattr(torch, dtype)
        save_random_model(policy, policy_cfg, seed=0, dtype=torch_dtype, paragraph=args.paragraph)
        save_random_model(prm, prm_cfg, seed=1, dtype=torch_dtype, value_head=True)
        replica = Replica(Settings(dtype=dtype, device=device, seed=0, prompt_style="plain"))
        for method in args.methods:
            for warm in range(2):     # one problem each, as deep as the timed run: every kernel variant
                replica.run(Unit("method", policy, prm, method, replace(cfg, seed=100 + warm),
                                 tuple(math500_shaped(1, seed=100 + warm))))
            run_timed(replica, method, policy, prm, cfg, args, cuda, bandwidth)


def run_timed(replica: Replica, method: str, policy: str, prm: str, cfg: SearchConfig, args, cuda: bool,
              bandwidth: float) -> None:
    meters = {"policy": Meter(cuda), "prm": Meter(cuda)}
    engines = {"policy": replica.llm.engine, "prm": replica.prm.engine}
    originals = {k: (e.run, e.runner.execute) for k, e in engines.items()}
    for k, e in engines.items():
        meters[k].attach(e)
    problems = tuple(math500_shaped(args.problems, seed=0))
    for e in engines.values():
        e.reset_stats()                   # (the KV peak of this run, not of the warm-ups)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            rows = replica.run(Unit("method", policy, prm, method, cfg, problems))
            seconds = time.perf_counter() - t
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
        for k, e in engines.items():
            e.run, e.runner.execute = originals[k]
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    for m in meters.values():
        m.settle()
    generated = sum(r["work"]["policy"]["generated_tokens"] for r in rows)
    plain, once = roofline(meters["policy"], engines["policy"], bandwidth)
    decoded = sum(b for b, _, _ in meters["policy"].decode_steps)
    decode_rate = decoded / max(meters["policy"].decode_wall, 1e-9)
    steps = meters["policy"].steps + meters["prm"].steps
    print(f"\n== {method}: {len(rows)} problems in {seconds:.1f} s; {generated} policy tokens, "
          f"{generated / seconds:,.0f} tok/s, {len(rows) / seconds * 3600:,.0f} problems/h")
    for k, m in meters.items():
        print(f"  {k:<7}{m.per_step()}")
    print(f"  host-device syncs: {syncs / max(steps, 1):.2f} per step" if cuda
          else "  host-device syncs: n/a (CPU)")
    for k, e in engines.items():
        print(f"  {k:<7}KV pool {e.kv_cache_tokens:,} tokens, peak use {e.stats.kv_tokens_peak:,}")
    if cuda:
        print(f"  max_memory_reserved {torch.cuda.max_memory_reserved() / 2**30:.1f} GiB")
    print(f"  Triton cache: {triton_cache()}")
    print(f"  roofline (policy decode steps, {decoded} tokens): {plain:,.0f} tok/s plain paged, {once:,.0f} "
          f"tok/s each slot read once; measured {decode_rate:,.0f} tok/s in those steps = "
          f"{decode_rate / once:.0%} "
          f"of the read-once bound; end to end {generated / seconds / once:.0%}", flush=True)


if __name__ == "__main__":
    main()

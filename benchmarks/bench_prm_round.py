"""Host work per PRM round of a step search, by depth: what `PRM.score` costs on the host when each
of N trajectories has grown by one step since the last round (beam search and DVTS score every
candidate every round). The model's forward costs nothing here (zeros of the right shape), so the
time is the host's: encoding the question and steps, hashing each step tag, making and checking
the engine's requests, admitting them on the cached prefix, and reading the scores.

Per round, by phase:
  write     writing question + steps as token ids, tag positions and tag digests (whole, or a
            written trajectory extended by its new steps): PRM._write
  digests   of which: the hash of the tokens up to each tag (which tags were scored before)
  request   making and checking the engine's requests (engine/requests.py, from Engine.encode)
  engine    Engine.run (admission on the cached prefix, prefill of the new tokens, kept states)
  total     PRM.score, end to end

The issue's goal (26): host ms per round flat in depth, 40 steps within 1.5x of 10.

    python benchmarks/bench_prm_round.py [--trajectories 64] [--depths 10 40] [--step-chars 200]
"""
from __future__ import annotations

import argparse
import random
import string
import tempfile
import time
from collections import defaultdict

import torch

from random_model import QWEN2_5_1_5B, save_random_model
from tts_engine import PRM

PHASES = ("write", "digests", "request", "engine", "total")


def prm_folder(folder: str) -> str:
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, max_position_embeddings=65536)
    save_random_model(folder, dict(QWEN2_5_1_5B, vocab_size=258, **tiny), dtype=torch.float32,
                      value_head=True)
    return folder


def timed(book: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            book[name] += time.perf_counter() - t
    return wrapper


def run(trajectories: int, depths: list[int], step_chars: int, seed: int = 0) -> dict[int, dict]:
    rng = random.Random(seed)

    def words(n: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase + "  ") for _ in range(n)).strip() or "x"

    with tempfile.TemporaryDirectory() as tmp:
        prm = PRM(prm_folder(tmp), kind="skywork", dtype="float32", device="cpu",
                  kv_cache_tokens=trajectories * (max(depths) + 2) * (step_chars + 8) + 4096)
        engine = prm.engine
        engine.runner.model.forward = lambda ids, pos, meta: torch.zeros(ids.shape[0], 16)
        import tts_engine.prm as prm_module
        book: dict = defaultdict(float)
        prm._write = timed(book, "write", prm._write)
        real_digests = prm_module._digests
        prm_module._digests = timed(book, "digests", real_digests)
        engine.requests = timed(book, "request", engine.requests)
        engine.run = timed(book, "engine", engine.run)
        question = words(300)
        steps = [[] for _ in range(trajectories)]
        rows = {}
        try:
            for depth in range(1, max(depths) + 1):
                for s in steps:
                    s.append(words(step_chars))
                book.clear()
                t = time.perf_counter()
                prm.score(question, steps)
                book["total"] = time.perf_counter() - t
                if depth in depths:
                    rows[depth] = {k: 1e3 * book[k] for k in PHASES}
        finally:
            prm_module._digests = real_digests
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trajectories", type=int, default=64)
    ap.add_argument("--depths", nargs="+", type=int, default=[10, 40])
    ap.add_argument("--step-chars", type=int, default=100,
                    help="characters a step (a token each with this byte-level tokenizer)")
    ap.add_argument("--repeats", type=int, default=3, help="runs; the table shows each depth's median")
    args = ap.parse_args()
    runs = [run(args.trajectories, args.depths, args.step_chars, seed) for seed in range(args.repeats)]
    print(f"{'depth':>6}{'trajectories':>14}" + "".join(f"{p:>10}" for p in PHASES)
          + "   (host ms per round, median of runs)")
    for depth in args.depths:
        cells = "".join(f"{sorted(r[depth][p] for r in runs)[len(runs) // 2]:>10.2f}" for p in PHASES)
        print(f"{depth:>6}{args.trajectories:>14}{cells}")


if __name__ == "__main__":
    main()

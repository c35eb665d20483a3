"""End to end on a GPU: decode of 64 beams sharing a 1k-token prompt on a random-weight
Llama-3.2-1B-shaped model (bf16), tokens/s against the roofline of engine-anchors.md section 7.

    python benchmarks/bench_gpu_e2e.py [--beams 64] [--prompt 1024] [--tokens 128]
    python benchmarks/bench_gpu_e2e.py --smoke     # checks the script on a CPU (tiny model)

Roofline per decode step: bytes = weights + shared prompt KV once (cascade) + each beam's own KV;
tokens/s <= beams * bandwidth / bytes. Bandwidth: the measured device-to-device copy rate.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from tts_engine import LLM, SamplingParams
from tts_engine.random_model import LLAMA_3_2_1B, save_random_model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    buf = torch.empty(1 << 30 if device == "cuda" else 1 << 26, dtype=torch.uint8, device=device)
    dst = torch.empty_like(buf)
    dst.copy_(buf)
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        dst.copy_(buf)
    sync(device)
    return 2 * buf.numel() * 10 / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--beams", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--smoke", action="store_true",
                    help="check this script on the CPU: a 2-layer model, 4 beams, Triton interpreted")
    args = ap.parse_args()
    cfg = dict(LLAMA_3_2_1B)
    device, dtype = "cuda", "bfloat16"
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        cfg.update(num_hidden_layers=2, hidden_size=128, intermediate_size=256, vocab_size=512,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32)
        args.beams, args.prompt, args.tokens = 4, 64, 6
        device, dtype = "cpu", "float32"
    n_params = cfg["vocab_size"] * cfg["hidden_size"] + cfg["num_hidden_layers"] * (
        cfg["hidden_size"] * (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * cfg["head_dim"]
        + cfg["num_attention_heads"] * cfg["head_dim"] * cfg["hidden_size"]
        + 3 * cfg["hidden_size"] * cfg["intermediate_size"]
    )
    kv_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * 2
    bw = copy_bandwidth(device)
    own = args.tokens / 2                    # average own tokens per beam during decode
    step_bytes = 2 * n_params + args.prompt * kv_per_token + args.beams * own * kv_per_token
    step_bytes_plain = 2 * n_params + args.beams * (args.prompt + own) * kv_per_token
    roof, roof_plain = args.beams * bw / step_bytes, args.beams * bw / step_bytes_plain
    print(
        f"\n{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; copy bandwidth "
        f"{bw / 1e9:.0f} GB/s; {args.beams} beams, {args.prompt}-token shared prompt, "
        f"{args.tokens} new tokens each; {n_params / 1e9:.2f}B params {dtype}"
    )
    print(f"roofline: {roof:,.0f} tok/s reading the prompt once, {roof_plain:,.0f} tok/s reading it per beam")
    print(f"{'engine':<28}{'tokens':>8}{'seconds':>9}{'tok/s':>10}{'of roofline':>13}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        save_random_model(folder, cfg, dtype=getattr(torch, dtype))
        # most telling rows first: each prints as it finishes, so a time limit keeps what ran
        runs = (
            ("triton", 1024, False), ("triton", 1024, True), ("triton", None, False), ("torch", None, True))
        for backend, cascade, eager in runs:
            llm = LLM(
                folder, dtype=dtype, device=device, attention_backend=backend, enforce_eager=eager,
                max_num_seqs=args.beams, kv_cache_tokens=args.prompt + args.beams * (args.tokens + 8) + 4096)
            llm.engine.runner.cascade_min_work = cascade
            prompt = {"prompt_token_ids": torch.randint(2, cfg["vocab_size"], (args.prompt,)).tolist()}
            sp = SamplingParams(
                n=args.beams, temperature=1.0, max_tokens=args.tokens, ignore_eos=True, seed=0
            )
            llm.generate(prompt, SamplingParams(n=args.beams, max_tokens=4, ignore_eos=True))   # warm-up
            sync(device)
            t = time.perf_counter()
            out = llm.generate(prompt, sp)
            sync(device)
            dt = time.perf_counter() - t
            n = sum(len(o.token_ids) for o in out[0].outputs)
            # from what ran: a failed capture falls back to eager with a warning
            graphs = ", graphs" if llm.engine.runner.graphs else ", eager"
            name = f"{backend}{' + cascade' if cascade else ''}{graphs}"
            print(f"{name:<28}{n:>8}{dt:>9.2f}{n / dt:>10,.0f}{n / dt / roof:>13.0%}", flush=True)
            del llm
            if device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

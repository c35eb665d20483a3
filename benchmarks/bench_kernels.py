"""Attention kernel microbenchmarks at the shapes of the paper's small policies; prints a table.

    python benchmarks/bench_kernels.py            # on CUDA: Triton kernels (bf16)
    python benchmarks/bench_kernels.py --cpu      # on the CPU: the torch backend (float32), smaller shapes
    python benchmarks/bench_kernels.py --smoke    # on the CPU: the Triton kernels interpreted, tiny shapes
                                                  # (checks this script; its times mean nothing)

Rows, for Llama-3.2-1B (32 q heads, 8 KV heads, dim 64) and Qwen2.5-1.5B (12 / 2, dim 128, GQA 6:1):
  decode     paged decode at batch 256 x 8k, 256 x 32k and 1 x 32k context, as a share of the measured
             device-to-device copy bandwidth (goal: >= 70%).
  cascade    64 sequences sharing a 2k prefix with 256 own tokens each: cascade against plain paged
             decode (goal: >= 3x).
  extend     prefill attention over the paged pool (8 x 512 new tokens over 512 cached) against torch
             SDPA on the equivalent dense shapes.
  threshold  (Llama shape) cascade / plain time over sharers x shared length: where cascade starts to
             pay (the engine's cascade_min_work, sharers x shared tokens, comes from this table).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from tts_engine.kernels.spans import Spans


ONCE = False      # --smoke: each kernel runs once (interpreted, only that it runs matters)


def timeit(fn, device, iters=20, warmup=3) -> float:
    """Seconds per call. On CUDA: triton's do_bench (median), which flushes the L2 cache before
    every timed call, so KV reads come from HBM as in a real step (the pools here fit in L2)."""
    if ONCE:
        iters, warmup = 1, 0
    elif device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes per second of a device-to-device copy (read + write): the roofline for reading KV."""
    buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(buf)
    return 2 * nbytes / timeit(lambda: dst.copy_(buf), device)


def make_case(n_seqs, prefix, own, hq, hkv, d, dtype, device):
    """A pool where all sequences share `prefix` slots and each has `own` more, shuffled; each
    sequence's slots sit in its row of a slot table, as in the engine. Returns q, the caches, the
    plain decode spans and the cascade arguments (suffix spans and one level)."""
    slots = prefix + n_seqs * own + 1
    kc = torch.randn(slots, hkv, d, device=device, dtype=dtype)
    vc = torch.randn(slots, hkv, d, device=device, dtype=dtype)
    perm = torch.randperm(slots, device=device)
    shared = perm[:prefix]
    mine = perm[prefix:prefix + n_seqs * own].view(n_seqs, own)
    table = torch.cat([shared.expand(n_seqs, prefix), mine], dim=1).to(torch.int32)
    q = torch.randn(n_seqs, hq, d, device=device, dtype=dtype)
    rows = torch.arange(n_seqs, device=device)
    full = lambda x: torch.full((n_seqs,), x, device=device)   # noqa: E731
    plain = (table, Spans(rows, full(0), full(prefix + own), prefix + own))
    level = Spans(rows[:1], full(0)[:1], full(prefix)[:1], prefix, rows[None])
    cascade = (table, Spans(rows, full(prefix), full(own), own), [level])
    return q, kc, vc, plain, cascade


SHAPES = {"llama-3.2-1b": (32, 8, 64), "qwen2.5-1.5b": (12, 2, 128)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="benchmark the torch backend on the CPU")
    ap.add_argument("--smoke", action="store_true",
                    help="the Triton kernels interpreted on the CPU, tiny shapes")
    args = ap.parse_args()
    device = "cpu" if args.cpu or args.smoke or not torch.cuda.is_available() else "cuda"
    if args.smoke:
        global ONCE
        ONCE = True
        os.environ["TRITON_INTERPRET"] = "1"     # before the kernels are defined
    if device == "cuda" or args.smoke:
        from tts_engine.kernels import attention_triton as ops
    else:
        from tts_engine.kernels import attention_ref as ops
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    scale = 64 if args.smoke else 8 if device == "cpu" else 1       # shapes divided by this off the GPU
    k = 1024 // scale

    copy_bw = copy_bandwidth(device, 1024 * 2**20 // scale)
    print(f"\ndevice: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; dtype {dtype}; "
          f"{ops.__name__}; copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    print(f"{'model':<14}{'kernel':<9}{'shape':<26}{'time':>11}{'':>20}{'':>22}")
    for model, (hq, hkv, d) in SHAPES.items():
        rows = []
        for n, ctx in ((256 // min(scale, 64), 8 * k), (256 // min(scale, 64), 32 * k), (1, 32 * k)):
            # nothing shared: every slot comes from HBM
            q, kc, vc, plain, _ = make_case(n, 0, ctx, hq, hkv, d, dtype, device)
            t_dec = timeit(lambda: ops.decode_attention(q, kc, vc, *plain, d ** -0.5), device)
            kv_bytes = 2 * n * ctx * hkv * d * kc.element_size()
            rows.append(("decode", f"{n} x {ctx}", t_dec, f"{kv_bytes / t_dec / 1e9:.0f} GB/s",
                         f"{kv_bytes / t_dec / copy_bw:.0%} of copy"))
            del q, kc, vc, plain
            release(device)
        n, prefix, own = max(64 // scale, 2), 2 * k, k // 4
        q, kc, vc, plain, cascade = make_case(n, prefix, own, hq, hkv, d, dtype, device)
        t_plain = timeit(lambda: ops.decode_attention(q, kc, vc, *plain, d ** -0.5), device)
        t_casc = timeit(lambda: ops.cascade_decode_attention(q, kc, vc, *cascade, d ** -0.5), device)
        rows.append(("cascade", f"{n} x ({prefix} shared + {own})", t_casc, f"plain {t_plain * 1e3:.3f} ms",
                     f"{t_plain / t_casc:.2f}x faster"))
        del q, kc, vc, plain, cascade
        release(device)
        t_ext, t_sdpa, shape = extend_case(ops, hq, hkv, d, dtype, device, scale)
        rows.append(("extend", shape, t_ext, f"sdpa {t_sdpa * 1e3:.3f} ms",
                     f"{t_ext / t_sdpa:.2f}x sdpa time"))
        for r in rows:
            print(f"{model:<14}{r[0]:<9}{r[1]:<26}{r[2] * 1e3:>8.3f} ms{r[3]:>20}{r[4]:>22}", flush=True)

    hq, hkv, d = SHAPES["llama-3.2-1b"]
    print("\ncascade time / plain time (below 1.00 = cascade pays); Llama-3.2-1B heads; rows: sequences "
          "sharing, columns: shared tokens (each sequence has 32 own)")
    lens_grid = [16, 64, 256, 1024] if not args.smoke else [16, 64]
    print(f"{'sharers':<9}" + "".join(f"{p:>8}" for p in lens_grid))
    for sharers in (2, 4, 8, 16, 64) if not args.smoke else (2, 4):
        line = f"{sharers:<9}"
        for p in lens_grid:
            q, kc, vc, plain, cascade = make_case(sharers, p, 32, hq, hkv, d, dtype, device)
            tp = timeit(lambda: ops.decode_attention(q, kc, vc, *plain, d ** -0.5), device, iters=10)
            tc = timeit(lambda: ops.cascade_decode_attention(q, kc, vc, *cascade, d**-0.5), device, iters=10)
            line += f"{tc / tp:>8.2f}"
        print(line, flush=True)


def extend_case(ops, hq, hkv, d, dtype, device, scale):
    """8 sequences x 512 new tokens over a 512-token cached prefix, against dense SDPA."""
    b, new, pre = 8 // min(scale, 4), 512 // min(scale, 16), 512 // min(scale, 16)
    kv = pre + new
    kc = torch.randn(b * kv, hkv, d, device=device, dtype=dtype)
    vc = torch.randn_like(kc)
    table = torch.randperm(b * kv, device=device).view(b, kv)
    qx = torch.randn(b * new, hq, d, device=device, dtype=dtype)
    starts = torch.arange(b, device=device) * new
    qlens = torch.full((b,), new, device=device)
    kvlens = torch.full((b,), kv, device=device)
    seq_rows = torch.arange(b, device=device)
    t_ext = timeit(lambda: ops.extend_attention(qx, kc, vc, table.to(torch.int32), seq_rows, starts, qlens,
                                                kvlens, d**-0.5), device)
    qd = qx.view(b, new, hq, d).transpose(1, 2)
    kd = kc[table].transpose(1, 2)
    vd = vc[table].transpose(1, 2)
    mask = torch.ones(new, kv, dtype=torch.bool, device=device).tril(diagonal=pre)
    t_sdpa = timeit(lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask,
                                                                            enable_gqa=True), device)
    return t_ext, t_sdpa, f"{b} x {new} new over {pre}"


def release(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

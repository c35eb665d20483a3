"""Attention kernel microbenchmarks; prints a table.

    python benchmarks/bench_kernels.py            # on CUDA: Triton kernels (bf16)
    python benchmarks/bench_kernels.py --cpu      # on the CPU: the torch backend (float32)

Rows (issue 3):
  decode     paged decode, Llama-3.2-1B shapes (32 q heads, 8 KV heads, dim 64), 64 seqs x 2k
             context, as a fraction of the measured device-to-device copy bandwidth.
  cascade    64 seqs sharing a 2k prefix with 256 own tokens each: cascade vs plain paged decode.
  extend     prefill attention over the paged pool vs torch SDPA on the equivalent dense shapes.
  threshold  cascade / plain time over sharers x shared length: where cascade starts to pay
             (the engine's cascade_min_work, sharers x shared tokens, comes from this table).
"""
from __future__ import annotations

import argparse
import time

import torch

from tts_engine.kernels.spans import Spans


def timeit(fn, device, iters=20, warmup=3) -> float:
    """Seconds per call. On CUDA: triton's do_bench (median), which flushes the L2 cache before
    every timed call, so KV reads come from HBM as in a real step (the pools here fit in L2)."""
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="benchmark the torch backend on the CPU")
    args = ap.parse_args()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    if device == "cuda":
        from tts_engine.kernels import attention_triton as ops
        dtype, scale_down = torch.bfloat16, 1
    else:
        from tts_engine.kernels import attention_ref as ops
        dtype, scale_down = torch.float32, 8      # CPU: smaller shapes
    hq, hkv, d = 32, 8, 64
    rows = []

    # device-to-device copy bandwidth, the roofline for reading KV
    buf = torch.empty(256 * 2**20 // scale_down, dtype=torch.uint8, device=device)
    dst = torch.empty_like(buf)
    t = timeit(lambda: dst.copy_(buf), device)
    copy_bw = 2 * buf.numel() / t
    rows.append(("copy", f"{buf.numel() >> 20} MiB", f"{t * 1e3:.3f} ms", f"{copy_bw / 1e9:.0f} GB/s", ""))

    n, ctx = 64 // scale_down, 2048 // scale_down
    q, kc, vc, plain, _ = make_case(n, 0, ctx, hq, hkv, d, dtype, device)    # no slot shared: all from HBM
    t_dec = timeit(lambda: ops.decode_attention(q, kc, vc, *plain, d ** -0.5), device)
    kv_bytes = 2 * n * ctx * hkv * d * kc.element_size()
    rows.append(("decode", f"{n} seqs x {ctx}", f"{t_dec * 1e3:.3f} ms", f"{kv_bytes / t_dec / 1e9:.0f} GB/s",
                 f"{kv_bytes / t_dec / copy_bw:.0%} of copy"))

    prefix, own = 2048 // scale_down, 256 // scale_down
    q, kc, vc, plain, cascade = make_case(n, prefix, own, hq, hkv, d, dtype, device)
    t_plain = timeit(lambda: ops.decode_attention(q, kc, vc, *plain, d ** -0.5), device)
    t_casc = timeit(lambda: ops.cascade_decode_attention(q, kc, vc, *cascade, d ** -0.5), device)
    rows.append(("cascade", f"{n} x ({prefix} shared + {own})", f"{t_casc * 1e3:.3f} ms",
                 f"plain {t_plain * 1e3:.3f} ms", f"{t_plain / t_casc:.2f}x faster"))

    # extend: 8 sequences x 512 new tokens over a 512-token cached prefix, vs dense SDPA
    b, new, pre = 8 // min(scale_down, 4), 512 // scale_down, 512 // scale_down
    kv = pre + new
    kc = torch.randn(b * kv, hkv, d, device=device, dtype=dtype)
    vc = torch.randn_like(kc)
    table = torch.randperm(b * kv, device=device).view(b, kv)
    qx = torch.randn(b * new, hq, d, device=device, dtype=dtype)
    starts = torch.arange(b, device=device) * new
    qlens = torch.full((b,), new, device=device)
    kvlens = torch.full((b,), kv, device=device)
    seq_rows = torch.arange(b, device=device)
    t_ext = timeit(
        lambda: ops.extend_attention(
            qx, kc, vc, table.to(torch.int32), seq_rows, starts, qlens, kvlens, d**-0.5
        ),
        device,
    )
    qd = qx.view(b, new, hq, d).transpose(1, 2)
    kd = kc[table].transpose(1, 2)
    vd = vc[table].transpose(1, 2)
    mask = torch.ones(new, kv, dtype=torch.bool, device=device).tril(diagonal=pre)
    t_sdpa = timeit(lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask,
                                                                            enable_gqa=True), device)
    rows.append(
        (
            "extend",
            f"{b} x {new} new over {pre}",
            f"{t_ext * 1e3:.3f} ms",
            f"sdpa {t_sdpa * 1e3:.3f} ms",
            f"{t_ext / t_sdpa:.2f}x sdpa time",
        )
    )

    print(f"\ndevice: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; dtype {dtype}; "
          f"q heads {hq}, kv heads {hkv}, dim {d}")
    print(f"{'kernel':<10}{'shape':<28}{'time':>12}{'':>22}{'':>20}")
    for r in rows:
        print(f"{r[0]:<10}{r[1]:<28}{r[2]:>12}{r[3]:>22}{r[4]:>20}")

    print("\ncascade time / plain time (below 1.00 = cascade pays); rows: sequences sharing, "
          "columns: shared tokens (each sequence has 32 own)")
    lens_grid = [16, 64, 256, 1024]
    print(f"{'sharers':<9}" + "".join(f"{p:>8}" for p in lens_grid))
    for sharers in (2, 4, 8, 16, 64):
        line = f"{sharers:<9}"
        for p in lens_grid:
            q, kc, vc, plain, cascade = make_case(sharers, p, 32, hq, hkv, d, dtype, device)
            tp = timeit(lambda: ops.decode_attention(q, kc, vc, *plain, d ** -0.5), device, iters=10)
            tc = timeit(lambda: ops.cascade_decode_attention(q, kc, vc, *cascade, d**-0.5), device, iters=10)
            line += f"{tc / tp:>8.2f}"
        print(line)


if __name__ == "__main__":
    main()

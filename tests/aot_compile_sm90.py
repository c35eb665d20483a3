"""Compile every Triton kernel ahead of time for Hopper (sm_90) with the ptxas that ships with
triton, as the GPU would (the interpreter used by the other tests checks no types).
Run by tests/test_triton_compile.py in a subprocess without TRITON_INTERPRET."""
from __future__ import annotations

import inspect
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tts_engine.kernels import attention_triton as at
from tts_engine.kernels import elementwise_triton as et

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(fn, types: dict, consts: dict) -> None:
    consts = dict(consts)
    options = {k: consts.pop(k) for k in ("num_warps", "num_stages") if k in consts}
    params = list(inspect.signature(fn.fn).parameters)
    signature = {p: "constexpr" if p in consts else types.get(p, "i32") for p in params}
    constexprs = {(params.index(p),): v for p, v in consts.items()}
    triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=TARGET, options=options)


def main() -> int:
    failures = []
    for dt, precision in (("bf16", "tf32"), ("fp16", "tf32"), ("fp32", "ieee")):
        p = "*" + dt
        attn = dict(q_ptr=p, kc_ptr=p, vc_ptr=p, out_ptr=p, part_out_ptr="*fp32", part_lse_ptr="*fp32",
                    lens_ptr="*i64", plens_ptr="*i64", rows_ptr="*i64", qstart_ptr="*i64", qlens_ptr="*i64",
                    kvlens_ptr="*i64", table_ptr="*i32", trow_ptr="*i64", tstart_ptr="*i64", tlen_ptr="*i64",
                    work_ptr="*i32", scale="fp32", window="i32")
        cases = [
            (
                "store_kv", at._store_kv_kernel, dict(k_ptr=p, v_ptr=p, kc_ptr=p, vc_ptr=p, slot_ptr="*i64"),
                dict(WIDTH=512, BLOCK=512)),
            (
                "reduce", at._reduce_kernel,
                dict(part_out_ptr="*fp32", part_lse_ptr="*fp32", out_ptr=p, lse_ptr="*fp32"),
                dict(D=128, BLOCK_S=32, BLOCK_D=128)),
            # extend is autotuned: compile every GPU tile config
            *[
                (
                    f"extend {c.kwargs}",
                    at._extend_kernel.fn,
                    attn,
                    dict(
                        G=g, D=d, BLOCK_D=d, UPCAST=False, PRECISION=precision, **c.kwargs,
                        num_warps=c.num_warps, num_stages=c.num_stages),
                )
                for c in at._EXTEND_CONFIGS
                for g, d in ((4, 64), (1, 128))
            ],
            (
                "partial: cascade level",
                at._partial_kernel,
                attn,
                dict(
                    G=4, D=64, HAS_WORK=True, BLOCK_M=64, BLOCK_D=64, BLOCK_N=32, UPCAST=False,
                    PRECISION=precision),
            ),
            (
                "partial: cascade level G=3",
                at._partial_kernel,
                attn,
                dict(
                    G=3, D=128, HAS_WORK=True, BLOCK_M=64, BLOCK_D=128, BLOCK_N=32, UPCAST=False,
                    PRECISION=precision),
            ),
            (
                "rms_norm", et._rms_norm_kernel,
                dict(x_ptr=p, res_ptr=p, w_ptr=p, out_ptr=p, sum_ptr=p, eps="fp32"),
                dict(N=576, BLOCK=1024, HAS_RES=True)),
            (
                "rope", et._rope_kernel,
                dict(x_ptr=p, out_ptr=p, pos_ptr="*i64", cos_ptr="*fp32", sin_ptr="*fp32"),
                dict(H=40, D=128, ROT=128, BLOCK_H=64, BLOCK_D=128)),
            ("silu_and_mul", et._silu_mul_kernel, dict(x_ptr=p, out_ptr=p), dict(N=8192, BLOCK=1024)),
        ]
        for g, d in ((1, 64), (4, 128), (8, 64)):   # plain decode: one row per group
            cases.append((f"partial: decode G={g} D={d}", at._partial_kernel, attn,
                          dict(G=g, D=d, HAS_WORK=False, BLOCK_M=16, BLOCK_D=d, BLOCK_N=32, UPCAST=False,
                               PRECISION=precision)))
        for name, fn, types, consts in cases:
            try:
                compile_kernel(fn, types, consts)
            except Exception as e:  # report every failure, not just the first
                failures.append(f"{dt} {name}: {type(e).__name__}: {str(e)[:800]}")
    print("\n".join(failures) or "all kernels compiled for sm_90")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

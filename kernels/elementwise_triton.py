"""Triton kernels for RMSNorm (with fused residual add), RoPE and SiLU-and-mul; same signatures
as kernels/elementwise_ref.py. One program per token row."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr, eps, stride_x, stride_r, stride_o, stride_s,
                     N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < N
    x = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + offs, mask=m, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)      # one rounding, as torch's add
        tl.store(sum_ptr + row * stride_s + offs, x, mask=m)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / N + eps)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    # Hugging Face rounds the normalised value to the input dtype before the weight; the product of
    # two values of that dtype is exact in float32, so one final rounding matches it.
    normed = (xf * rstd).to(x.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (w * normed).to(out_ptr.dtype.element_ty), mask=m)


def rms_norm(x, weight, eps, residual=None):
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(x2)
    total = torch.empty_like(x2) if residual is not None else out
    res = residual.reshape(-1, x.shape[-1]) if residual is not None else x2
    n = x2.shape[-1]
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](x2, res, weight, out, total, eps, x2.stride(0), res.stride(0),
                                         out.stride(0), total.stride(0), N=n, BLOCK=triton.next_power_of_2(n),
                                         HAS_RES=residual is not None)
    out = out.view(x.shape)
    return out if residual is None else (out, total.view(x.shape))


@triton.jit
def _rope_kernel(
    x_ptr, out_ptr, pos_ptr, cos_ptr, sin_ptr, stride_xt, stride_xh, stride_ot, stride_oh, stride_c,
    H: tl.constexpr, D: tl.constexpr, ROT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mh = offs_h < H
    md = offs_d < D
    m = mh[:, None] & md[None, :]
    x = tl.load(x_ptr + t * stride_xt + offs_h[:, None] * stride_xh + offs_d[None, :], mask=m, other=0.0)
    HALF: tl.constexpr = ROT // 2
    # partner of dim i within the rotated part: i + half (first half, negated) or i - half
    partner = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)
    in_rot = offs_d < ROT
    xp = tl.load(x_ptr + t * stride_xt + offs_h[:, None] * stride_xh + partner[None, :],
                 mask=m & in_rot[None, :], other=0.0)
    sign = tl.where(offs_d < HALF, -1.0, 1.0)
    # the table is rounded to x's dtype first, as the reference does; the arithmetic is float32
    cos = tl.load(cos_ptr + pos * stride_c + offs_d, mask=in_rot, other=1.0).to(x.dtype).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_c + offs_d, mask=in_rot, other=0.0).to(x.dtype).to(tl.float32)
    xf = x.to(tl.float32)
    rotated = xf * cos[None, :] + xp.to(tl.float32) * sign[None, :] * sin[None, :]
    out = tl.where(in_rot[None, :], rotated, xf)
    tl.store(out_ptr + t * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m)


def apply_rope(x, positions, cos_table, sin_table):
    t, h, d = x.shape
    out = torch.empty(t, h, d, dtype=x.dtype, device=x.device)
    if x.stride(2) != 1:
        x = x.contiguous()
    if t:
        _rope_kernel[(t,)](x, out, positions, cos_table, sin_table, x.stride(0), x.stride(1), out.stride(0),
                           out.stride(1), cos_table.stride(0), H=h, D=d, ROT=cos_table.shape[1],
                           BLOCK_H=triton.next_power_of_2(h), BLOCK_D=triton.next_power_of_2(d))
    return out


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, N: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = col < N
    gate = tl.load(x_ptr + row * stride_x + col, mask=m, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + N + col, mask=m, other=0.0)
    silu = (gate / (1.0 + tl.exp(-gate))).to(up.dtype).to(tl.float32)   # rounded like torch's F.silu
    tl.store(out_ptr + row * stride_o + col, (silu * up.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=m)


def silu_and_mul(x):
    n = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * n)
    out = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(n))
    if x2.shape[0]:
        _silu_mul_kernel[(x2.shape[0], triton.cdiv(n, block))](
            x2, out, x2.stride(0), out.stride(0), N=n, BLOCK=block
        )
    return out.view(*x.shape[:-1], n)

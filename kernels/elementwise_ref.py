"""Torch references for the per-token kernels: RMSNorm (with fused residual add), RoPE, SiLU-and-mul.
Numerics follow Hugging Face's Llama: normalise in float32, cast back, then scale by the weight."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """RMSNorm of x, or of x + residual when a residual is given; then returns (out, x + residual)."""
    if residual is not None:
        x = x + residual
    if x.dtype == torch.float32:
        out = F.rms_norm(x, weight.shape, weight, eps)    # fused; identical in float32
    else:
        xf = x.float()
        out = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return out if residual is None else (out, x)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor
               ) -> torch.Tensor:
    """Rotate-half RoPE. x: [tokens, heads, head_dim]; tables: [max_positions, rot_dim] float32
    (llama3 / linear scaling is already in the table); dims past rot_dim pass through."""
    cos = cos_table[positions].to(x.dtype)[:, None, :]
    sin = sin_table[positions].to(x.dtype)[:, None, :]
    rot = cos.shape[-1]
    xr = x[..., :rot]
    half = rot // 2
    out = xr * cos + torch.cat([-xr[..., half:], xr[..., :half]], dim=-1) * sin
    return out if rot == x.shape[-1] else torch.cat([out, x[..., rot:]], dim=-1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [tokens, 2 * inter] holding gate then up -> silu(gate) * up."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up

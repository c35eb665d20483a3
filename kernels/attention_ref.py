"""Torch reference for paged attention over a token-granular KV pool (page size 1).

Layout: k_cache / v_cache are [num_slots, num_kv_heads, head_dim]; a sequence's KV lives at the
slots listed in its row of `block_table` ([batch, max_kv_len], padded). Query heads are grouped
over KV heads (GQA): query head h reads KV head h // (num_heads // num_kv_heads).
"""
from __future__ import annotations

import torch


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write new K/V rows ([tokens, kv_heads, dim]) into the pool at their slots."""
    k_cache[slot_mapping] = k
    v_cache[slot_mapping] = v


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_table: torch.Tensor, kv_lens: torch.Tensor, scale: float,
                     sliding_window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One query token per sequence. q: [batch, heads, dim]. Returns (out [batch, heads, dim],
    lse [batch, heads]) with the natural-log log-sum-exp of the scaled scores."""
    b, h, d = q.shape
    hkv = k_cache.shape[1]
    k = k_cache[block_table]                      # [b, s, hkv, d]
    v = v_cache[block_table]
    qg = q.view(b, hkv, h // hkv, d).float()
    scores = torch.einsum("bhgd,bshd->bhgs", qg, k.float()) * scale
    pos = torch.arange(block_table.shape[1], device=q.device)
    valid = pos[None, :] < kv_lens[:, None]
    if sliding_window is not None:
        valid &= pos[None, :] > (kv_lens[:, None] - 1 - sliding_window)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - lse[..., None])
    out = torch.einsum("bhgs,bshd->bhgd", p, v.float())
    return out.reshape(b, h, d).to(q.dtype), lse.reshape(b, h)


def extend_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     slots: torch.Tensor, scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """New tokens of one sequence attend to its cached prefix and causally to themselves.
    q: [new, heads, dim]; slots: [kv_len] (prefix then the new tokens, already stored)."""
    n, h, d = q.shape
    kv_len = slots.shape[0]
    k = k_cache[slots].transpose(0, 1)            # [hkv, kv_len, d]
    v = v_cache[slots].transpose(0, 1)
    q_pos = torch.arange(kv_len - n, kv_len, device=q.device)
    k_pos = torch.arange(kv_len, device=q.device)
    mask = k_pos[None, :] <= q_pos[:, None]
    if sliding_window is not None:
        mask &= k_pos[None, :] > (q_pos[:, None] - sliding_window)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.transpose(0, 1)

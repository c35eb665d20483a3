"""Attention metadata for one forward step and the attention layer that consumes it.

A step's tokens are packed: first one token per decoding sequence, then the new tokens of each
prefilling sequence (a whole prompt or a chunk of one). The runner builds one AttentionMetadata
per step; every layer reads it (nano-vllm's "context" idea, passed explicitly).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tts_engine.kernels import attention_ref
from tts_engine.kernels.spans import Spans


@dataclass
class AttentionMetadata:
    slot_table: torch.Tensor          # [rows, width] the runner's table: row r lists its sequence's slots
    slot_mapping: torch.Tensor        # [tokens] pool slot for each new token's K/V
    num_decode: int                   # the first num_decode tokens are decode tokens, one per sequence
    # Decode row b's own span (including the new token): its whole context, or with cascade only
    # what follows its deepest shared span. Cascade levels: spans shared by groups of decode rows.
    decode: Spans
    cascade_levels: list[Spans] | None
    # Prefill (extend): sequence j's new tokens are rows num_decode + prefill_q_start[j] ...; it
    # reads the first prefill_kv_lens[j] slots (cached prefix + new tokens) of table row prefill_rows[j].
    prefill_rows: torch.Tensor         # [num_prefill]
    prefill_q_start: torch.Tensor      # [num_prefill]
    prefill_q_lens: torch.Tensor       # [num_prefill]
    prefill_kv_lens: torch.Tensor      # [num_prefill]
    prefill_max_q_len: int
    # What the backend derives from the spans once for all layers (the torch backend's gathered
    # slots, the Triton tile plans), made by the first layer. Every metadata has its own, so
    # nothing carries over from one step (or one CUDA-graph capture) to the next.
    plan: dict = field(default_factory=dict)


class Attention(torch.nn.Module):
    """Stores the step's new K/V in the pool, then attends over the pool.

    All K/V of a layer are stored before any attention reads them, so a sequence may read slots
    that another sequence of the same step is writing (shared prompts admitted together)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, sliding_window: int | None):
        super().__init__()
        self.backend = attention_ref     # attention ops; Model.set_backend swaps them
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5
        self.sliding_window = sliding_window
        self.k_cache: torch.Tensor | None = None   # [num_slots, kv_heads, dim], set by the runner
        self.v_cache: torch.Tensor | None = None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        ops = self.backend
        ops.store_kv(self.k_cache, self.v_cache, k, v, meta.slot_mapping)
        outs = []
        nd = meta.num_decode
        if nd and meta.cascade_levels:
            outs.append(
                ops.cascade_decode_attention(
                    q[:nd], self.k_cache, self.v_cache, meta.slot_table, meta.decode, meta.cascade_levels,
                    self.scale, plan=meta.plan)
            )
        elif nd:
            outs.append(ops.decode_attention(q[:nd], self.k_cache, self.v_cache, meta.slot_table, meta.decode,
                                             self.scale, self.sliding_window, plan=meta.plan))
        if meta.prefill_max_q_len:
            outs.append(
                ops.extend_attention(
                    q[nd:], self.k_cache, self.v_cache, meta.slot_table, meta.prefill_rows,
                    meta.prefill_q_start, meta.prefill_q_lens, meta.prefill_kv_lens, self.scale,
                    self.sliding_window, meta.prefill_max_q_len)
            )
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.reshape(-1, self.num_heads * self.head_dim)

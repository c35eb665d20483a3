"""Torch reference for paged attention over a token-granular KV pool (page size 1).

Layout: k_cache / v_cache are [num_slots, num_kv_heads, head_dim]. `slot_table` ([rows, width],
int32 or int64) lists each running sequence's slots in its own row; it lives on the device for the
engine's lifetime and only new entries are written each step (with page size 1, tables rebuilt
every step would be as long as the contexts). Attention reads spans of it: (row, start column,
length); entries past a span are stale and never read. Query heads are grouped over KV heads
(GQA): query head h reads KV head h // (num_heads // num_kv_heads). LSE is the natural-log
log-sum-exp of the scaled scores.

These functions are the CPU backend and the oracles the Triton kernels are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tts_engine.kernels.spans import Spans


def gather(cache: torch.Tensor, slots: torch.Tensor, workspace: dict | None = None, name: str = ""
           ) -> torch.Tensor:
    """cache rows at slots (any shape) -> [*slots.shape, kv_heads, dim]; index_select is several
    times faster than advanced indexing on the CPU. With a workspace, into its buffer `name`, reused
    by every layer and step (each layer's K/V are read before the next layer gathers): on the CPU a
    fresh tensor of tens of MB costs more in page faults than the copy itself (decode attention of
    90 rows over 600 slots, SmolLM2's 3 KV heads: 57 ms a layer fresh, 30 ms reused; Intel Xeon)."""
    flat, shape = slots.reshape(-1), (*slots.shape, *cache.shape[1:])
    if workspace is None:
        return cache.index_select(0, flat).view(shape)
    n = flat.numel() * cache[0].numel()
    buf = workspace.get(name)
    if buf is None or buf.numel() < n or buf.dtype != cache.dtype or buf.device != cache.device:
        buf = workspace[name] = torch.empty(n + n // 4, dtype=cache.dtype, device=cache.device)
    return torch.index_select(cache, 0, flat, out=buf[:n].view(flat.numel(), *cache.shape[1:])).view(shape)


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write new K/V rows ([tokens, kv_heads, dim]) into the pool at their slots."""
    k_cache[slot_mapping] = k
    v_cache[slot_mapping] = v


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention that also returns the LSE. q: [b, h, m, d]; k, v: [b, h, n, d]; valid: bool,
    broadcastable to [b, h, m, n]. Returns out [b, h, m, d] and lse [b, h, m] (float32)."""
    if q.device.type == "cpu" and q.dtype == k.dtype:
        # ATen's fused CPU flash kernel returns the LSE and reads strided K/V without copies.
        bias = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill_(~valid, float("-inf"))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, attn_mask=bias, scale=scale
        )
        return out, lse.to(_acc_dtype(q))
    acc = _acc_dtype(q)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse[..., None]), v.to(acc)).to(q.dtype), lse


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    # float32 accumulation, or float64 when the reference itself runs in float64
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def span_slots(slot_table: torch.Tensor, spans: Spans, plan: dict | None = None) -> torch.Tensor:
    """[n, max_len] slots of each span, padded with slot 0 (table entries past a span are stale;
    callers mask the padding by length). Gathered once per step (kept in the step's plan)."""
    plan = {} if plan is None else plan
    slots = plan.get(("slots", id(spans)))
    if slots is None:
        slots = plan[("slots", id(spans))] = _slots(slot_table, spans.table_rows, spans.starts, spans.lens,
                                              max(spans.max_len, 1))
    return slots


def _slots(slot_table: torch.Tensor, table_rows: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor,
           width: int) -> torch.Tensor:
    offs = torch.arange(width, device=starts.device)
    cols = (starts[:, None] + offs).clamp_(max=slot_table.shape[1] - 1)
    return slot_table[table_rows[:, None], cols].long().masked_fill_(offs >= lens[:, None], 0)


# A bucket's fixed cost (its own gather and attention calls) in bytes of K/V read, against the
# padding it saves; and a bucket pads no span to more than 1 / BUCKET_FILL of its length.
BUCKET_BYTES, BUCKET_FILL = 3 << 20, 0.8


def length_buckets(lens: list[int], min_saving: int) -> list[list[int]]:
    """Decode rows grouped by span length, longest first, each group to be padded only to its own
    longest span. A batch's contexts can differ several-fold (problems of different lengths):
    padding all to the longest read 2.6x the slots needed (CPU beam benchmark, 10 MATH-500
    problems). A row starts a new group when it is shorter than BUCKET_FILL of the group's longest
    and the rows left would save at least `min_saving` slots by it."""
    order = sorted(range(len(lens)), key=lambda i: -lens[i])
    groups: list[list[int]] = []
    for k, i in enumerate(order):
        if groups:
            top = lens[groups[-1][0]]
            if not (lens[i] < BUCKET_FILL * top and (top - lens[i]) * (len(order) - k) >= min_saving):
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


def decode_buckets(slot_table: torch.Tensor, spans: Spans, sliding_window: int | None, slot_bytes: int,
                   plan: dict | None = None) -> list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]:
    """(rows or None for all, slots [rows, width], valid [rows, width]) per length bucket; once
    per step. On the CPU only: the lengths are on the host there (elsewhere one bucket, no sync)."""
    plan = {} if plan is None else plan
    key = ("buckets", id(spans), sliding_window)
    if key in plan:
        return plan[key]
    lens = spans.lens
    host = lens.tolist() if lens.device.type == "cpu" else []
    groups = length_buckets(host, BUCKET_BYTES // slot_bytes)
    if len(groups) <= 1:
        parts = [(None, span_slots(slot_table, spans, plan), lens)]
    else:
        parts = []
        for g in groups:
            rows = torch.tensor(g, device=lens.device)
            width = max(host[g[0]], 1)
            slots = _slots(slot_table, spans.table_rows[rows], spans.starts[rows], lens[rows], width)
            parts.append((rows, slots, lens[rows]))
    buckets = plan[key] = []
    for rows, slots, lens_ in parts:
        pos = torch.arange(slots.shape[1], device=lens.device)
        valid = pos[None, :] < lens_[:, None]
        if sliding_window is not None:
            valid &= pos[None, :] > (lens_[:, None] - 1 - sliding_window)
        buckets.append((rows, slots, valid))
    return buckets


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_table: torch.Tensor,
                     spans: Spans, scale: float, sliding_window: int | None = None, return_lse: bool = False,
                     plan: dict | None = None):
    """One query token per sequence, attending to its span of the slot table.
    q: [batch, heads, dim] -> out [batch, heads, dim] (and lse [batch, heads] if asked)."""
    b, h, d = q.shape
    hkv = k_cache.shape[1]
    slot_bytes = 2 * k_cache[0].numel() * k_cache.element_size()
    buckets = decode_buckets(slot_table, spans, sliding_window, slot_bytes, plan)
    out = lse = None
    for rows, slots, valid in buckets:
        k = gather(k_cache, slots, spans.workspace, "k").transpose(1, 2)      # [n, hkv, s, d]
        v = gather(v_cache, slots, spans.workspace, "v").transpose(1, 2)
        qb = q if rows is None else q.index_select(0, rows)
        n = qb.shape[0]
        # the g query heads of a KV head act as g query rows against that head's keys (GQA)
        o, l = attention_with_lse(qb.view(n, hkv, h // hkv, d), k, v, valid[:, None, None, :], scale)
        o, l = o.reshape(n, h, d), l.reshape(n, h)
        if rows is None:        # one bucket: every row, in order
            out, lse = o, l
            continue
        if out is None:
            out, lse = q.new_empty(b, h, d), l.new_empty(b, h)
        out.index_copy_(0, rows, o)
        lse.index_copy_(0, rows, l)
    return (out, lse) if return_lse else out


def shared_prefix_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_table: torch.Tensor,
    level: Spans,
    scale: float,
    plan: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode queries grouped by a cascade level attend to their group's span, whose K/V are read
    once for the whole group. q: [batch, heads, dim].
    Returns (out [batch, heads, dim], lse [batch, heads]); rows in no group get lse = -inf."""
    b, h, d = q.shape
    hkv = k_cache.shape[1]
    g = h // hkv
    ng, n = level.group_rows.shape
    pad = level.group_rows < 0
    # all n*g query rows of a group's KV head face the same keys: one attention per (group, KV head)
    qg = (
        q[level.group_rows.masked_fill(pad, 0)]
        .view(ng, n, hkv, g, d)
        .permute(0, 2, 1, 3, 4)
        .reshape(ng, hkv, n * g, d)
    )
    table = span_slots(slot_table, level, plan)
    k = gather(k_cache, table, level.workspace, "k").transpose(1, 2)      # [ng, hkv, p, d]
    v = gather(v_cache, table, level.workspace, "v").transpose(1, 2)
    valid = torch.arange(table.shape[1], device=q.device)[None, :] < level.lens[:, None]
    out, lse = attention_with_lse(qg, k, v, valid[:, None, None, :], scale)
    out = out.view(ng, hkv, n, g, d).permute(0, 2, 1, 3, 4).reshape(ng * n, h, d)
    lse = lse.view(ng, hkv, n, g).permute(0, 2, 1, 3).reshape(ng * n, h)
    keep = ~pad.reshape(-1)
    dest = level.group_rows.reshape(-1)[keep]
    full_out = torch.zeros(b, h, d, dtype=q.dtype, device=q.device)
    full_lse = torch.full((b, h), float("-inf"), dtype=lse.dtype, device=q.device)
    full_out[dest] = out[keep]
    full_lse[dest] = lse[keep]
    return full_out, full_lse


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets from their (out, lse) pairs: the result equals
    attention over the union. out: [..., heads, dim], lse: [..., heads]; lse = -inf marks an empty set."""
    lse = torch.logaddexp(lse_a, lse_b)
    wa = torch.exp(lse_a - lse)[..., None]
    wb = torch.exp(lse_b - lse)[..., None]
    acc = _acc_dtype(out_a)
    return (out_a.to(acc) * wa + out_b.to(acc) * wb).to(out_a.dtype), lse


def cascade_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_table: torch.Tensor,
    own: Spans,
    levels: list[Spans],
    scale: float,
    plan: dict | None = None,
) -> torch.Tensor:
    """Decode attention where sequences share prefixes, possibly at several depths (the problem
    prompt for all beams, then each beam's own steps for its children). No row is in two groups of
    one level; the levels cover consecutive, disjoint stretches of each row's context and its own
    span (own.lens[b] >= 1 slots) the rest. All parts are merged by LSE."""
    out, lse = decode_attention(q, k_cache, v_cache, slot_table, own, scale, return_lse=True, plan=plan)
    for level in levels:
        out_p, lse_p = shared_prefix_attention(q, k_cache, v_cache, slot_table, level, scale, plan)
        out, lse = merge_attention(out_p, lse_p, out, lse)
    return out


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_table: torch.Tensor,
    seq_rows: torch.Tensor,
    q_start: torch.Tensor,
    q_lens: torch.Tensor,
    kv_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    max_q_len: int | None = None,
) -> torch.Tensor:
    """New tokens of several sequences, packed in q ([tokens, heads, dim]; sequence b's are rows
    q_start[b] .. q_start[b] + q_lens[b]), attend to the first kv_lens[b] slots of slot_table row
    seq_rows[b]: the cached prefix, then the new tokens themselves (already stored), causally.
    (max_q_len, the longest q_lens[b], sizes the Triton grid; unused here.)"""
    out = torch.empty_like(q)
    for s, n, kv_len, r in zip(q_start.tolist(), q_lens.tolist(), kv_lens.tolist(), seq_rows.tolist()):
        slots = slot_table[r, :kv_len].long()
        k = gather(k_cache, slots).transpose(0, 1)      # [hkv, kv_len, d]
        v = gather(v_cache, slots).transpose(0, 1)
        q_pos = torch.arange(kv_len - n, kv_len, device=q.device)
        k_pos = torch.arange(kv_len, device=q.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            mask &= k_pos[None, :] > (q_pos[:, None] - sliding_window)
        o = F.scaled_dot_product_attention(q[s:s + n].transpose(0, 1), k, v, attn_mask=mask, scale=scale,
                                           enable_gqa=True)
        out[s:s + n] = o.transpose(0, 1)
    return out

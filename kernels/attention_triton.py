"""Triton kernels for paged attention over the token-granular KV pool (page size 1).

Same signatures and layout as kernels/attention_ref.py (k_cache / v_cache: [slots, kv_heads, dim];
each sequence's slots in its row of the slot table; attention reads (row, start, length) spans).

Decode is split-KV ("flash decoding"). Stage 1 (one kernel) gives each (tile, KV head, split)
program the query heads of that KV head for the rows of one tile as one [BLOCK_M, D] block, so K/V
are read once per tile and the products are tl.dot's; it writes a partial output and its LSE.
Plain decode: every row is a group (and a tile) of its own over its own span. Cascade decode adds,
per level, groups of many rows over each shared span, tiled by a work list (plan_level) whose
length depends only on shapes, so CUDA graphs can replay it. Stage 2 merges all partials of a row
by log-sum-exp, which is also the prefix/suffix merge. Extend (prefill) tiles new tokens times the
query heads of a KV head in the same way, causally, in one online softmax.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from tts_engine.kernels.spans import Spans


# Triton's CPU interpreter gets tl.dot wrong on bfloat16 tiles (numpy has no bfloat16), so there
# the kernels upcast tiles to float32 before their dots; on a GPU they use bf16 tensor cores.
UPCAST = os.environ.get("TRITON_INTERPRET") == "1"


def _precision(q: torch.Tensor) -> str:
    # float32 models get full-precision dots (tl.dot would use TF32, ~1e-3 error); half types use
    # their tensor-core path either way
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


# ---------------------------------------------------------------- store

@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, stride_kt, stride_vt, stride_cs,
                     WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < WIDTH
    tl.store(kc_ptr + slot * stride_cs + offs, tl.load(k_ptr + t * stride_kt + offs, mask=m), mask=m)
    tl.store(vc_ptr + slot * stride_cs + offs, tl.load(v_ptr + t * stride_vt + offs, mask=m), mask=m)


def store_kv(k_cache, v_cache, k, v, slot_mapping) -> None:
    """Write new K/V rows ([tokens, kv_heads, dim]) into the pool at their slots."""
    n = slot_mapping.shape[0]
    if n == 0:
        return
    k = k.reshape(n, -1)
    v = v.reshape(n, -1)
    if k.stride(1) != 1 or v.stride(1) != 1:
        k, v = k.contiguous(), v.contiguous()
    width = k.shape[1]
    _store_kv_kernel[(n,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0), k_cache.stride(0),
                           WIDTH=width, BLOCK=triton.next_power_of_2(width))


# ---------------------------------------------------------------- shared inner loop

@triton.jit
def _attend_slots(q, kc_ptr, vc_ptr, slots_ptr, start, end, kvh, stride_cs, stride_ch, offs_d, md, scale,
                  q_pos, window, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax of a [BLOCK_Q, BLOCK_D] query tile over keys start..end of one KV head, read
    through a slot list; with CAUSAL, row r sees only keys <= q_pos[r] (and > q_pos[r] - window
    when window > 0). Returns the normalised output and its LSE (-inf where nothing was seen)."""
    m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mn = offs_n < end
        slots = tl.load(slots_ptr + offs_n, mask=mn, other=0).to(tl.int64)
        kv_off = slots[:, None] * stride_cs + kvh * stride_ch + offs_d[None, :]
        k = tl.load(kc_ptr + kv_off, mask=mn[:, None] & md[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        ok = mn[None, :]
        if CAUSAL:
            ok = ok & (offs_n[None, :] <= q_pos[:, None])
            if window > 0:
                ok = ok & (offs_n[None, :] > q_pos[:, None] - window)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)   # rows that have seen no key yet
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vc_ptr + kv_off, mask=mn[:, None] & md[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    return out, lse


# ---------------------------------------------------------------- stage 1: partial attention


# Integers that change from step to step are not specialized: Triton would compile a variant per
# value class (== 1, divisible by 16), dozens in a study. (Program ids are int64 before any product
# with a stride, everywhere: in int32, row x stride overflows at ~2^31 elements.)
@triton.jit(do_not_specialize=["n_rows", "num_splits", "split_offset", "stride_rg", "stride_pb", "stride_ph",
                               "stride_lb", "stride_lh"])
def _partial_kernel(
    q_ptr, kc_ptr, vc_ptr, table_ptr, trow_ptr, tstart_ptr, tlen_ptr, rows_ptr, work_ptr, part_out_ptr,
    part_lse_ptr, scale, window, n_rows, num_splits, split_offset, stride_qb, stride_qh, stride_cs, stride_ch,
    stride_t, stride_rg, stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, G: tl.constexpr,
    D: tl.constexpr, HAS_WORK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # One program: one tile of a group of decode rows that share the span (table row trow[grp],
    # columns tstart[grp] .. + tlen[grp]), one KV head, one split of the span. The tile holds the
    # query heads of that KV head for BLOCK_M // G rows of the group, so each K/V block is loaded
    # once for all of them. Plain decode: every row is a group of one, program (row, head, split).
    # Cascade levels: the work list names (group, first row) per tile; -1 entries pad it to a
    # fixed length so that CUDA graphs can replay it. Group widths, split counts and offsets are
    # runtime ints: as constexprs every new batch shape would compile a new kernel.
    w = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    if HAS_WORK:
        grp = tl.load(work_ptr + 2 * w)
        if grp < 0:
            return
        first = tl.load(work_ptr + 2 * w + 1)
    else:
        grp = w
        first = 0
    length = tl.load(tlen_ptr + grp)
    lo = length * 0       # same int type as length: the compiler rejects a branch that changes lo's type
    if window > 0:
        lo = tl.maximum(length - window, 0)
    # at least 4 blocks per split: short spans (a beam's own tokens under a graph's 16 splits)
    # leave the later splits empty, and those write only an LSE of -inf
    per = tl.maximum(tl.cdiv(length - lo, num_splits), 4 * BLOCK_N)
    start = lo + split * per
    end = tl.minimum(start + per, length)
    slots_ptr = table_ptr + tl.load(trow_ptr + grp).to(tl.int64) * stride_t + tl.load(tstart_ptr + grp)

    offs_m = tl.arange(0, BLOCK_M)      # (row-in-tile, head-in-group) pairs
    ROWS_PER_TILE: tl.constexpr = BLOCK_M // G
    r_in = first + offs_m // G
    g_in = offs_m % G
    mm = (offs_m < ROWS_PER_TILE * G) & (r_in < n_rows)
    rows = tl.load(rows_ptr + grp * stride_rg + r_in, mask=mm, other=-1)
    mm = mm & (rows >= 0)
    rows = tl.where(mm, rows, 0).to(tl.int64)
    heads = kvh * G + g_in
    offs_d = tl.arange(0, BLOCK_D)
    md = offs_d < D
    q = tl.load(q_ptr + rows[:, None] * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mm[:, None] & md[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    out, lse = _attend_slots(
        q, kc_ptr, vc_ptr, slots_ptr, start, end, kvh, stride_cs, stride_ch, offs_d, md, scale, offs_m, 0,
        BLOCK_M, BLOCK_D, BLOCK_N, False, UPCAST, PRECISION)
    s_idx = split_offset + split
    if start < end:
        tl.store(part_out_ptr + rows[:, None] * stride_pb + heads[:, None] * stride_ph + s_idx * stride_ps
                 + offs_d[None, :], out, mask=mm[:, None] & md[None, :])
    tl.store(part_lse_ptr + rows * stride_lb + heads * stride_lh + s_idx, lse, mask=mm)


# ---------------------------------------------------------------- stage 2: LSE reduce

@triton.jit(do_not_specialize=["stride_pb", "stride_ph", "stride_lb", "stride_lh", "S"])
def _reduce_kernel(part_out_ptr, part_lse_ptr, out_ptr, lse_ptr,
                   stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh, stride_xb,
                   S, D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    # Partials with an LSE of -inf (empty splits, levels a row is not in) are never read: their
    # outputs were not written.
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    ms = offs_s < S
    md = offs_d < D
    lse = tl.load(part_lse_ptr + b * stride_lb + h * stride_lh + offs_s, mask=ms, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(lse > float("-inf"), tl.exp(lse - m), 0.0)
    total = tl.sum(w, 0)
    parts = tl.load(
        part_out_ptr + b * stride_pb + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
        mask=(ms & (lse > float("-inf")))[:, None] & md[None, :],
        other=0.0,
    )
    out = tl.sum(parts * w[:, None], 0) / total
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=md)
    tl.store(lse_ptr + b * stride_xb + h, m + tl.log(total))


def _num_splits(max_len: int, block_n: int) -> int:
    # enough splits to keep the GPU busy on long contexts, none wasted on short ones
    return max(1, min(MAX_SPLITS, triton.cdiv(max_len, 4 * block_n)))


MAX_SPLITS = 16
BLOCK_N = 32
CASCADE_BLOCK_M = 64     # (row, query head) pairs per cascade tile


def _tile_m(g: int, rows: int) -> int:
    return min(CASCADE_BLOCK_M, _pow2(rows * g)) if rows > 1 else _pow2(g)


def plan_level(level: Spans, batch: int, g: int) -> torch.Tensor:
    """The work list of a cascade level: one (group, first row) pair per tile of BLOCK_M // g rows,
    padded with -1 to groups + ceil(batch / rows per tile) entries, a length that depends only on
    shapes (no host sync, so CUDA graphs capture it; rows of a level are disjoint, so that bounds it)."""
    ng, width = level.group_rows.shape
    per = _tile_m(g, width) // g
    counts = (level.group_rows >= 0).sum(1)
    tiles = (counts + per - 1) // per
    ends = torch.cumsum(tiles, 0)
    w = torch.arange(ng + triton.cdiv(batch, per), device=counts.device)
    grp = torch.searchsorted(ends, w, right=True)
    valid = grp < ng
    grp = grp.clamp(max=ng - 1)
    first = (w - (ends - tiles)[grp]) * per
    return torch.stack([torch.where(valid, grp, -1), first], 1).to(torch.int32)


def _launch_partials(q, k_cache, v_cache, slot_table, trows, tstarts, tlens, group_rows, work, scale, window,
                     part_out, part_lse, num_splits, offset):
    """Stage 1 over groups of query rows (group_rows [groups, rows], padded with -1) into splits
    offset .. offset + num_splits of the partial buffers."""
    h, d = q.shape[1], q.shape[2]
    g = h // k_cache.shape[1]
    n_rows = group_rows.shape[1]
    items = group_rows.shape[0] if work is None else work.shape[0]
    _partial_kernel[(items, k_cache.shape[1], num_splits)](
        q, k_cache, v_cache, slot_table, trows, tstarts, tlens, group_rows, trows if work is None else work,
        part_out, part_lse, scale, window or 0, n_rows, num_splits, offset, q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), slot_table.stride(0), group_rows.stride(0), part_out.stride(0),
        part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1), G=g, D=d,
        HAS_WORK=work is not None, BLOCK_M=_tile_m(g, n_rows), BLOCK_D=_pow2(d), BLOCK_N=BLOCK_N,
        UPCAST=UPCAST, PRECISION=_precision(q))


def _reduce(part_out, part_lse, q):
    b, h, d = q.shape
    s = part_out.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(b, h, dtype=torch.float32, device=q.device)
    _reduce_kernel[(b, h)](
        part_out, part_lse, out, lse, part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), out.stride(0), out.stride(1), lse.stride(0), s, D=d,
        BLOCK_S=_pow2(s), BLOCK_D=triton.next_power_of_2(d))
    return out, lse


def _decode(q, k_cache, v_cache, slot_table, own: Spans, levels: list[Spans], scale, window, plan=None):
    """Stage 1 for each row's own span and for every cascade level, each level into its own
    splits of the partial buffers; then one stage-2 reduce. Returns (out, lse). The row list and
    the levels' tile plans are made by the first layer of a step and kept in its plan."""
    plan = {} if plan is None else plan
    b, h, d = q.shape
    if q.stride(2) != 1:
        q = q.contiguous()
    g = h // k_cache.shape[1]
    s_splits = _num_splits(own.max_len, BLOCK_N)
    p_splits = [_num_splits(level.max_len, BLOCK_N) for level in levels]
    total = s_splits + sum(p_splits)
    part_out = torch.empty(b, h, total, d, dtype=torch.float32, device=q.device)
    # every split of a row's own span writes its LSE; a level writes only the rows in its groups
    part_lse = (torch.full((b, h, total), float("-inf"), dtype=torch.float32, device=q.device) if levels
                else torch.empty(b, h, total, dtype=torch.float32, device=q.device))
    own_rows = plan.get("rows")
    if own_rows is None:        # each decode row as a group of its own: [[0], [1], ...]
        own_rows = plan["rows"] = torch.arange(b, device=q.device)[:, None]
    _launch_partials(
        q, k_cache, v_cache, slot_table, own.table_rows, own.starts, own.lens, own_rows, None, scale, window,
        part_out, part_lse, s_splits, 0)
    offset = s_splits
    for level, splits in zip(levels, p_splits):
        work = plan.get(("work", id(level)))
        if work is None:        # planned by the first layer, reused by the others
            work = plan[("work", id(level))] = plan_level(level, b, g)
        _launch_partials(q, k_cache, v_cache, slot_table, level.table_rows, level.starts, level.lens,
                         level.group_rows, work, scale, None, part_out, part_lse, splits, offset)
        offset += splits
    return _reduce(part_out, part_lse, q)


def decode_attention(
    q, k_cache, v_cache, slot_table, spans: Spans, scale, sliding_window=None, return_lse=False, plan=None
):
    """One query token per sequence over its span of the slot table (see attention_ref).
    q: [batch, heads, dim]."""
    out, lse = _decode(q, k_cache, v_cache, slot_table, spans, [], scale, sliding_window, plan)
    return (out, lse) if return_lse else out


def cascade_decode_attention(q, k_cache, v_cache, slot_table, own: Spans, levels: list[Spans], scale,
                             plan=None):
    """Decode attention where sequences share prefixes at one or more levels (see
    attention_ref.cascade_decode_attention). Each group's span is read once per (KV head, tile)
    for all its queries; every level writes its own partials, one reduce merges them all."""
    return _decode(q, k_cache, v_cache, slot_table, own, levels, scale, None, plan)[0]


# ---------------------------------------------------------------- extend (prefill)

# Tile sizes for extend: Triton picks the fastest on the first call per (G, D) on a GPU (configs
# that do not fit the chip are skipped); the interpreter gets one small tile.
_EXTEND_CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32})] if UPCAST else [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=1)]


@triton.autotune(configs=_EXTEND_CONFIGS, key=["G", "D", "q_bucket"])
@triton.jit
def _extend_kernel(q_ptr, kc_ptr, vc_ptr, out_ptr, table_ptr, trow_ptr, qstart_ptr, qlens_ptr, kvlens_ptr,
                   scale, window, q_bucket,
                   stride_qt, stride_qh, stride_ot, stride_oh, stride_cs, stride_ch, stride_t,
                   G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program: BLOCK_M // G new tokens of one sequence times the G query heads of one KV head
    # (so each K/V block is loaded once for all of them). Keys run from the cached prefix
    # (through the slot table) into the new tokens, causally, in one online softmax.
    # (q_bucket, the longest chunk rounded up to a power of two, only keys the autotuner: a
    # one-token chunk and a 2k-token prompt want different tiles.)
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    mblk = tl.program_id(2).to(tl.int64)
    TOK: tl.constexpr = BLOCK_M // G      # tokens per tile
    q_len = tl.load(qlens_ptr + b)
    if mblk * TOK >= q_len:
        return
    q_start = tl.load(qstart_ptr + b)
    kv_len = tl.load(kvlens_ptr + b)
    offs = tl.arange(0, BLOCK_M)
    t_in = mblk * TOK + offs // G
    heads = kvh * G + offs % G
    mm = (offs < TOK * G) & (t_in < q_len)
    q_pos = kv_len - q_len + t_in
    offs_d = tl.arange(0, BLOCK_D)
    md = offs_d < D
    tok = (q_start + t_in).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mm[:, None] & md[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    hi = tl.minimum(kv_len, kv_len - q_len + (mblk + 1) * TOK)
    lo = kv_len * 0       # int64 like kv_len: the compiler rejects a branch that changes lo's type
    if window > 0:
        lo = tl.maximum(kv_len - q_len + mblk * TOK - window + 1, 0)
    slots_ptr = table_ptr + tl.load(trow_ptr + b).to(tl.int64) * stride_t
    out, _ = _attend_slots(
        q, kc_ptr, vc_ptr, slots_ptr, lo, hi, kvh, stride_cs, stride_ch, offs_d, md, scale, q_pos, window,
        BLOCK_M, BLOCK_D, BLOCK_N, True, UPCAST, PRECISION)
    tl.store(out_ptr + tok[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mm[:, None] & md[None, :])


def extend_attention(
    q, k_cache, v_cache, slot_table, seq_rows, q_start, q_lens, kv_lens, scale, sliding_window=None,
    max_q_len: int | None = None):
    """New tokens of several sequences (packed in q: [tokens, heads, dim]) attend to their cached
    prefix and causally to themselves; their own K/V are already stored."""
    h, d = q.shape[1], q.shape[2]
    hkv = k_cache.shape[1]
    g = h // hkv
    if q.stride(2) != 1:
        q = q.contiguous()
    out = torch.empty_like(q)
    if max_q_len is None:
        max_q_len = int(q_lens.max())
    grid = lambda meta: (q_lens.shape[0], hkv, triton.cdiv(max_q_len, meta["BLOCK_M"] // g))   # noqa: E731
    q_bucket = min(triton.next_power_of_2(max_q_len), 4096)
    _extend_kernel[grid](
        q, k_cache, v_cache, out, slot_table, seq_rows, q_start, q_lens, kv_lens, scale, sliding_window or 0,
        q_bucket, q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_cache.stride(0),
        k_cache.stride(1), slot_table.stride(0), G=g, D=d, BLOCK_D=_pow2(d), UPCAST=UPCAST,
        PRECISION=_precision(q))
    return out

"""Triton kernels against their torch references (computed in float64), on fresh random inputs.
Without a GPU they run under TRITON_INTERPRET=1 (set in conftest.py), so shapes stay small."""
from __future__ import annotations

import random

import pytest
import torch

from tts_engine.kernels import attention_ref as ref
from tts_engine.kernels import attention_triton as tri
from tts_engine.kernels.spans import Spans

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# (query heads, KV heads): MHA and GQA group sizes 1, 4 and 8
HEADS = [(4, 4), (8, 2), (8, 1)]


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in kernel output"
    return ((out.double() - expected).norm() / expected.norm()).item()


def make_pool(slots: int, hkv: int, d: int, dtype):
    return (
        torch.randn(slots, hkv, d, device=DEVICE).to(dtype),
        torch.randn(slots, hkv, d, device=DEVICE).to(dtype),
    )


def f64(*ts):
    return [t.double() for t in ts]


def slot_table(parts: list[torch.Tensor], pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A persistent-style slot table (int32, more rows than needed, junk in unused entries) holding
    each slot list in a random row; returns (table, row of each list)."""
    width = max(len(p) for p in parts) + pad
    table = torch.randint(0, 10**6, (len(parts) + pad, width), dtype=torch.int32, device=DEVICE)
    rows = torch.randperm(len(parts) + pad, device=DEVICE)[:len(parts)]
    for r, p in zip(rows.tolist(), parts):
        table[r, :len(p)] = p
    return table, rows


def distinct_slots(lens: list[int], slots: int) -> list[torch.Tensor]:
    """Each sequence gets distinct random slots (a pool shuffled like a real one)."""
    return [torch.randperm(slots, device=DEVICE)[:n] for n in lens]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv(dtype):
    kc, vc = make_pool(50, 2, 64, dtype)
    kc2, vc2 = kc.clone(), vc.clone()
    k, v = torch.randn(7, 2, 64, device=DEVICE).to(dtype), torch.randn(7, 2, 64, device=DEVICE).to(dtype)
    slots = torch.randperm(50, device=DEVICE)[:7]
    tri.store_kv(kc, vc, k, v, slots)
    ref.store_kv(kc2, vc2, k, v, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,hkv", HEADS)
@pytest.mark.parametrize("d", [64, 128])
def test_decode_attention(dtype, h, hkv, d):
    """Spans of ragged lengths (1, partial tiles, several splits) that start mid-row."""
    lens = [1, random.randint(2, 40), random.randint(41, 150)]
    offsets = [random.randint(0, 9) for _ in lens]
    kc, vc = make_pool(400, hkv, d, dtype)
    parts = distinct_slots([o + n for o, n in zip(offsets, lens)], 400)
    table, rows = slot_table(parts)
    spans = lambda: Spans(
        rows, torch.tensor(offsets, device=DEVICE), torch.tensor(lens, device=DEVICE), max(lens)  # noqa: E731
    )
    q = torch.randn(len(lens), h, d, device=DEVICE).to(dtype)
    out, lse = tri.decode_attention(q, kc, vc, table, spans(), d ** -0.5, return_lse=True)
    r_out, r_lse = ref.decode_attention(*f64(q, kc, vc), table, spans(), d ** -0.5, return_lse=True)
    assert rel_err(out, r_out) < TOL[dtype]
    assert rel_err(lse, r_lse) < TOL[dtype]
    # the reference itself against dense attention over each span
    for i, (p, o, n) in enumerate(zip(parts, offsets, lens)):
        k = kc[p[o:o + n].long()].double().transpose(0, 1)
        v = vc[p[o:o + n].long()].double().transpose(0, 1)
        dense_out = torch.nn.functional.scaled_dot_product_attention(
            q[i].double().view(hkv, h // hkv, d), k, v, scale=d ** -0.5)
        assert rel_err(r_out[i], dense_out.reshape(h, d)) < 1e-10


def test_reference_reuses_one_workspace_across_steps():
    """The torch backend gathers K/V into the runner's workspace, shared by every step's spans: a
    smaller step after a larger one reuses the buffer and gives what fresh buffers give."""
    kc, vc = make_pool(600, 2, 64, torch.float32)
    workspace, buffers = {}, set()
    for lens in ([random.randint(100, 200), random.randint(1, 99), 150], [random.randint(1, 80), 40]):
        table, rows = slot_table(distinct_slots(lens, 600))
        q = torch.randn(len(lens), 8, 64, device=DEVICE)
        lens_ = torch.tensor(lens, device=DEVICE)
        spans = [Spans(rows, torch.zeros_like(rows), lens_, max(lens), workspace=w) for w in (workspace, {})]
        out, fresh = (ref.decode_attention(q, kc, vc, table, sp, 0.125) for sp in spans)
        assert torch.equal(out, fresh)
        buffers.add(workspace["k"].data_ptr())
    assert len(buffers) == 1


def test_decode_attention_sliding_window():
    lens = [5, 90]
    kc, vc = make_pool(200, 2, 64, torch.float32)
    table, rows = slot_table(distinct_slots(lens, 200))
    q = torch.randn(2, 8, 64, device=DEVICE)
    spans = lambda: Spans(rows, torch.zeros_like(rows), torch.tensor(lens, device=DEVICE), 90)   # noqa: E731
    out = tri.decode_attention(q, kc, vc, table, spans(), 0.125, 33)
    expected = ref.decode_attention(*f64(q, kc, vc), table, spans(), 0.125, 33)
    assert rel_err(out, expected) < 1e-5


def test_length_buckets_by_hand():
    """Rows sorted longest first; a row opens a bucket below 0.8 of the bucket's longest, and only
    when the rows left would save at least min_saving padded slots by it."""
    lens = [50, 100, 10, 95, 48, 90]
    assert ref.length_buckets(lens, 100) == [[1, 3, 5], [0, 4, 2]]    # 10 saves (50 - 10) x 1 < 100
    assert ref.length_buckets(lens, 10) == [[1, 3, 5], [0, 4], [2]]
    assert ref.length_buckets(lens, 10**9) == [[1, 3, 5, 0, 4, 2]]


@pytest.mark.parametrize("window", [None, 40])
def test_reference_buckets_ragged_rows(monkeypatch, window):
    """On the CPU the torch backend pads each length bucket only to its own longest span: rows of
    very different lengths, in several buckets, still get exactly their own dense attention."""
    monkeypatch.setattr(ref, "BUCKET_BYTES", 1)          # every length gap opens a bucket
    lens = [random.randint(180, 200), 1, random.randint(2, 30), random.randint(60, 90),
            random.randint(180, 200)]
    offsets = [random.randint(0, 5) for _ in lens]
    h, hkv, d = 8, 2, 16
    kc, vc = make_pool(900, hkv, d, torch.float64)
    parts = distinct_slots([o + n for o, n in zip(offsets, lens)], 900)
    table, rows = slot_table(parts)
    q = torch.randn(len(lens), h, d, device=DEVICE, dtype=torch.float64)
    spans = Spans(rows, torch.tensor(offsets, device=DEVICE), torch.tensor(lens, device=DEVICE), max(lens))
    plan = {}
    out, lse = ref.decode_attention(q, kc, vc, table, spans, d ** -0.5, window, return_lse=True, plan=plan)
    if DEVICE == "cpu":         # the two longest together, then one bucket per length range
        assert len(plan[("buckets", id(spans), window)]) == 4
    for i, (p, o, n) in enumerate(zip(parts, offsets, lens)):
        keep = p[o:o + n].long()[-window:] if window else p[o:o + n].long()
        k, v = kc[keep].transpose(0, 1), vc[keep].transpose(0, 1)
        scores = torch.einsum("hgd,hsd->hgs", q[i].view(hkv, h // hkv, d), k) * d ** -0.5
        dense = torch.einsum("hgs,hsd->hgd", scores.softmax(-1), v)
        assert rel_err(out[i], dense.reshape(h, d)) < 1e-10
        assert rel_err(lse[i], scores.logsumexp(-1).reshape(h)) < 1e-10


def _pad_stack(parts: list[list[int]]) -> torch.Tensor:
    width = max(len(p) for p in parts)
    return torch.tensor([p + [-1] * (width - len(p)) for p in parts], device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,hkv", HEADS)
@pytest.mark.parametrize("d", [64, 128])
def test_cascade_decode_attention(dtype, h, hkv, d):
    """Two levels, as in beam search: a root prompt shared by rows 0-8, then groups sharing spans
    of different lengths past it (one of length 1, row 6 in no group), and row 9 sharing nothing.
    Every row's whole context sits in its own table row; the levels and suffixes are spans of
    those rows. Checked against plain decode over each whole context."""
    slots = 700
    kc, vc = make_pool(slots, hkv, d, dtype)
    perm = torch.randperm(slots, device=DEVICE)
    taken = 0

    def take(n):
        nonlocal taken
        taken += n
        return perm[taken - n:taken]

    root = take(random.randint(1, 90))
    group_lens = [random.randint(20, 120), 1, 67]
    groups = [[0, 3, 4], [1, 5], [2, 7, 8]]
    prefixes = [take(n) for n in group_lens]
    suffixes = [take(random.randint(1, 30)) for _ in range(10)]
    group_of = {r: g for g, rows in enumerate(groups) for r in rows}
    full, suffix_start = [], []
    for r in range(10):
        parts = ([root] if r < 9 else []) + ([prefixes[group_of[r]]] if r in group_of else [])
        suffix_start.append(sum(len(p) for p in parts))
        full.append(torch.cat(parts + [suffixes[r]]))
    table, rows = slot_table(full)
    full_lens = torch.tensor([len(f) for f in full], device=DEVICE)
    q = torch.randn(10, h, d, device=DEVICE).to(dtype)
    t = lambda xs: torch.tensor(xs, device=DEVICE)   # noqa: E731
    suffix_lens = [len(s) for s in suffixes]
    spans = lambda: (   # noqa: E731  (fresh objects: backends cache per-step work on them)
        Spans(rows, t(suffix_start), t(suffix_lens), max(suffix_lens)),
        [Spans(rows[:1], t([0]), t([len(root)]), len(root), t([list(range(9))])),
         Spans(rows[[g[0] for g in groups]], t([len(root)] * 3), t(group_lens), max(group_lens),
                   _pad_stack(groups))])
    whole = Spans(rows, torch.zeros_like(rows), full_lens, int(full_lens.max()))
    expected = ref.decode_attention(*f64(q, kc, vc), table, whole, d ** -0.5)
    out = tri.cascade_decode_attention(q, kc, vc, table, *spans(), d ** -0.5)
    assert rel_err(out, expected) < TOL[dtype]
    # the torch reference of the cascade path agrees too
    assert rel_err(ref.cascade_decode_attention(*f64(q, kc, vc), table, *spans(), d**-0.5), expected) < 1e-10


def test_cascade_plan_pads_to_a_shape_only_length():
    """The tile plan of a level: one entry per tile of each group, -1 after, of a length that a
    CUDA graph can fix (groups + ceil(batch / rows per tile))."""
    zeros = torch.zeros(3, dtype=torch.long)
    level = Spans(zeros, zeros, zeros + 1, 1,
                      torch.tensor([[0, 1, 2, 3, 4, 5, 6, -1, -1, -1], [7, 8] + [-1] * 8, [-1] * 10]))
    work = tri.plan_level(level, batch=9, g=16)     # 4 rows per tile: group 0 needs 2 tiles, group 1 one
    assert len(work) == 3 + 3
    assert work[:3].tolist() == [[0, 0], [0, 4], [1, 0]]
    assert (work[3:, 0] == -1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,hkv", HEADS)
@pytest.mark.parametrize("d", [64, 128])
def test_extend_attention(dtype, h, hkv, d):
    """Ragged chunks (1 token, a partial tile, several tiles) over cached prefixes of 0..n tokens."""
    q_lens = [1, random.randint(2, 31), random.randint(33, 70)]
    prefix = [random.randint(0, 50), 0, random.randint(1, 40)]
    kv_lens = [p + n for p, n in zip(prefix, q_lens)]
    kc, vc = make_pool(400, hkv, d, dtype)
    table, rows = slot_table(distinct_slots(kv_lens, 400))
    q = torch.randn(sum(q_lens), h, d, device=DEVICE).to(dtype)
    q_start = torch.tensor([0, q_lens[0], q_lens[0] + q_lens[1]], device=DEVICE)
    args = (
        table,
        rows,
        q_start,
        torch.tensor(q_lens, device=DEVICE),
        torch.tensor(kv_lens, device=DEVICE),
        d**-0.5,
    )
    out = tri.extend_attention(q, kc, vc, *args)
    expected = ref.extend_attention(*f64(q, kc, vc), *args)
    assert rel_err(out, expected) < TOL[dtype]


def test_extend_attention_sliding_window():
    q_lens, kv_lens = [40], [100]
    kc, vc = make_pool(200, 2, 64, torch.float32)
    table, rows = slot_table(distinct_slots(kv_lens, 200))
    q = torch.randn(40, 8, 64, device=DEVICE)
    args = (table, rows, torch.tensor([0], device=DEVICE), torch.tensor(q_lens, device=DEVICE),
            torch.tensor(kv_lens, device=DEVICE), 0.125, 24)
    assert (
        rel_err(tri.extend_attention(q, kc, vc, *args), ref.extend_attention(*f64(q, kc, vc), *args)) < 1e-5
    )


# ---------------------------------------------------------------- per-token kernels

from tts_engine.kernels import elementwise_ref as eref  # noqa: E402
from tts_engine.kernels import elementwise_triton as etri  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, with_residual):
    x = torch.randn(5, 96, device=DEVICE).to(dtype)
    w = (torch.rand(96, device=DEVICE) + 0.5).to(dtype)
    res = torch.randn(5, 96, device=DEVICE).to(dtype) if with_residual else None
    out = etri.rms_norm(x, w, 1e-5, res)
    expected = eref.rms_norm(*f64(x, w), 1e-5, None if res is None else res.double())
    if with_residual:
        assert rel_err(out[1], expected[1]) < TOL[dtype]
        out, expected = out[0], expected[0]
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope_type", ["default", "llama3"])
@pytest.mark.parametrize("d,rot", [(64, 64), (128, 128), (64, 32)])
def test_rope(dtype, rope_type, d, rot):
    from tts_engine.config import RopeConfig
    from tts_engine.models.layers import Rotary
    rope = RopeConfig(theta=500000.0, rope_type=rope_type, factor=8.0, original_max_position_embeddings=64,
                      partial_rotary_factor=rot / d)
    table = Rotary(rope, d, 300).to(DEVICE)
    x = torch.randn(7, 6, d, device=DEVICE).to(dtype)
    pos = torch.tensor([0, 1, 5, 63, 64, 200, 299], device=DEVICE)
    out = etri.apply_rope(x, pos, table.cos, table.sin)
    expected = eref.apply_rope(x.double(), pos, table.cos.double(), table.sin.double())
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul(dtype):
    x = torch.randn(4, 2 * 80, device=DEVICE).to(dtype)
    assert rel_err(etri.silu_and_mul(x), eref.silu_and_mul(x.double())) < TOL[dtype]

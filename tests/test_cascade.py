"""Cascade planning (engine/cascade.py) on random beam trees: every plan is exact (each decode
row's shared spans and own suffix cover its context once, members of a group hold the same slots
there, no row twice in a level, no group of one), and sequences leaving never re-read the tree."""
from __future__ import annotations

import random

from tts_engine.engine.cache import RadixCache, SlotAllocator
from tts_engine.engine.cascade import CascadePlanner
from tts_engine.engine.sequence import Sequence
from tts_engine.sampling_params import SamplingParams


def beam_tree(rng: random.Random):
    """A prompt, beams under it, children under each beam, samples under each child: one decoding
    sequence per sample, holding the path to its child's node plus a few private tokens."""
    cache = RadixCache(SlotAllocator(1 << 16))
    alloc = cache.allocator
    prompt = [rng.randrange(1000) for _ in range(rng.randrange(50, 120))]
    seqs = []
    for _ in range(rng.randrange(2, 5)):
        beam = prompt + [rng.randrange(1000) for _ in range(rng.randrange(3, 12))]
        for _ in range(rng.randrange(1, 4)):
            child = beam + [rng.randrange(1000) for _ in range(rng.randrange(3, 12))]
            for _ in range(rng.randrange(1, 4)):
                seq = Sequence(len(seqs), 0, 0, child, SamplingParams(), 0)
                _, seq.node = cache.insert(child, alloc.alloc(len(child)))
                seq.row = len(seqs)
                seq.num_computed = len(child) + rng.randrange(1, 5)
                seqs.append(seq)
    return seqs      # (seq.slots reads the path as it is: inserting later paths split earlier ones)


def check_exact(seqs, levels, starts, min_work):
    for level in levels:
        rows = [r for g in level for r in g.rows]
        assert len(rows) == len(set(rows))
        for g in level:
            assert len(g.rows) >= 2 and g.table_row in [seqs[r].row for r in g.rows]
            assert len({tuple(seqs[r].slots[g.start:g.end]) for r in g.rows}) == 1
    for b, seq in enumerate(seqs):
        spans = sorted((g.start, g.end) for level in levels for g in level if b in g.rows)
        covered = 0
        for start, end in spans:
            assert start == covered
            covered = end
        assert covered == starts[b] <= len(seq.slots)


def read_once(levels, starts, seqs) -> int:
    """Slots read by a step under this plan (each group's span once, each row's own suffix)."""
    return (sum(g.end - g.start for level in levels for g in level)
            + sum(s.num_computed - st for s, st in zip(seqs, starts)))


def test_plans_stay_exact_as_sequences_leave_and_join():
    rng = random.Random(random.randrange(1 << 30))
    for _ in range(20):
        seqs = beam_tree(rng)
        if len(seqs) < 4:
            continue
        min_work = rng.choice([1, 16, 64])
        planner = CascadePlanner(min_work)
        levels, starts = planner.plan(seqs)
        check_exact(seqs, levels, starts, min_work)
        assert levels and planner.rebuilds == 1
        live = list(seqs)
        while len(live) > 2:
            live.pop(rng.randrange(len(live)))
            levels, starts = planner.plan(live)
            check_exact(live, levels, starts, min_work)
            # a shared span is read once: never more than reading every context whole
            assert read_once(levels, starts, live) <= sum(s.num_computed for s in live)
        assert planner.rebuilds == 1               # leaving never walks the tree
        planner.plan(live + [next(s for s in seqs if s not in live)])
        assert planner.rebuilds == 2               # joining does


def test_the_plan_of_a_beam_tree_by_hand():
    """A 100-token prompt under four samples: two beams of 10 tokens, each with two samples."""
    cache = RadixCache(SlotAllocator(1024))
    prompt = list(range(100))
    seqs = []
    for beam in range(2):
        path = prompt + [1000 + 10 * beam + i for i in range(10)]
        for k in range(2):
            seq = Sequence(len(seqs), 0, k, path, SamplingParams(), 0)
            _, seq.node = cache.insert(path, cache.allocator.alloc(len(path)))
            seq.row, seq.num_computed = 7 + len(seqs), 112
            seqs.append(seq)
    planner = CascadePlanner(1)
    levels, starts = planner.plan(seqs)
    assert [[(g.start, g.end, g.rows) for g in level] for level in levels] == [
        [(0, 100, [0, 1, 2, 3])], [(100, 110, [0, 1]), (100, 110, [2, 3])]]
    assert starts == [110] * 4
    # sample 1 leaves: sample 0 reads its beam's 10 tokens as its own; the prompt stays shared
    levels, starts = planner.plan([seqs[0], seqs[2], seqs[3]])
    assert [[(g.start, g.end, g.rows) for g in level] for level in levels] == [
        [(0, 100, [0, 1, 2])], [(100, 110, [1, 2])]]
    assert starts == [100, 110, 110] and planner.rebuilds == 1

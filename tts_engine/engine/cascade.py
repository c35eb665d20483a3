"""Cascade planning: the context that decoding sequences share, read once for all of them.

A run of tree nodes with the same set of decoding sequences below it is one span (the problem
prompt for every beam, then a beam's steps for its children, ...). Going down each sequence's
path, spans are taken while sharers x span tokens reaches `min_work`; the k-th span of a path is
on level k (so no row is in two groups of a level), and the rest of a context is the sequence's
own suffix.

The plan is kept from step to step, because the set of decoding sequences rarely changes and
their tree nodes do not change while they decode (generated tokens stay private until the
sequence finishes). A step in which a sequence joins (admitted, forked) rebuilds the plan from
the tree, one walk up each decoding path. A sequence that leaves is only taken out of its own
spans; where that leaves a span with one sharer, that sequence reads the span (and everything
below it) as part of its own suffix. Every other step costs the batch size: not the depth of the
paths, the length of the contexts or the size of the tree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tts_engine.engine.cache import RadixCache
from tts_engine.engine.sequence import Sequence


@dataclass
class SharedSpan:
    """Tree columns start..end shared by the decoding sequences `members` (seq_id -> Sequence)."""
    start: int
    end: int
    level: int
    members: dict[int, Sequence] = field(default_factory=dict)


@dataclass
class Group:
    """A shared span as one step reads it: columns start..end of slot-table row `table_row` (any
    member's row: they hold the same slots there), for the decode rows `rows`."""
    table_row: int
    start: int
    end: int
    rows: list[int]


class CascadePlanner:
    def __init__(self, min_work: int | None):
        self.min_work = min_work
        self.levels: list[dict[int, SharedSpan]] = []    # per level, id(span) -> span
        self.spans: dict[int, list[SharedSpan]] = {}     # seq_id -> its spans, level by level
        self.starts: dict[int, int] = {}                 # seq_id -> where its own suffix starts
        self.rebuilds = 0                                # (tests check how often the tree is read)

    def plan(self, decode: list[Sequence]) -> tuple[list[list[Group]], list[int]]:
        """This step's levels of groups (rows index `decode`) and each row's own start."""
        if len(decode) < 2:             # nothing to share; and whoever decodes next is planned afresh
            self.levels, self.spans, self.starts = [], {}, {}
            return [], [0] * len(decode)
        if any(s.seq_id not in self.spans for s in decode):
            self._rebuild(decode)
        elif len(self.spans) != len(decode):
            for seq_id in self.spans.keys() - {s.seq_id for s in decode}:
                self._leave(seq_id)
        index = {s.seq_id: b for b, s in enumerate(decode)}
        levels = []
        for level in self.levels:
            groups = []
            for span in level.values():
                rows = [index[i] for i in span.members]
                groups.append(Group(decode[rows[0]].row, span.start, span.end, rows))
            levels.append(groups)
        return levels, [self.starts[s.seq_id] for s in decode]

    def _rebuild(self, decode: list[Sequence]) -> None:
        self.rebuilds += 1
        self.levels, self.spans, self.starts = [], {}, {}
        paths, count = [], {}
        for seq in decode:
            path = RadixCache.path(seq.node)
            for node in path:
                count[id(node)] = count.get(id(node), 0) + 1
            paths.append(path)
        made: dict[int, SharedSpan] = {}
        for seq, path in zip(decode, paths):
            mine, start, j = [], 0, 0
            while j < len(path):
                top, sharers = path[j], count[id(path[j])]
                while j + 1 < len(path) and count[id(path[j + 1])] == sharers:
                    j += 1
                lo, hi = top.depth - len(top.key), path[j].depth
                if sharers < 2 or sharers * (hi - lo) < self.min_work:
                    break
                span = made.get(id(top))
                if span is None:
                    span = made[id(top)] = SharedSpan(lo, hi, len(mine))
                    if span.level == len(self.levels):
                        self.levels.append({})
                    self.levels[span.level][id(span)] = span
                span.members[seq.seq_id] = seq
                mine.append(span)
                start, j = hi, j + 1
            self.spans[seq.seq_id], self.starts[seq.seq_id] = mine, start

    def _leave(self, seq_id: int) -> None:
        del self.starts[seq_id]
        for span in self.spans.pop(seq_id):
            del span.members[seq_id]
            if len(span.members) == 1:      # the last sharer reads it, and all below, as its own
                (other,) = span.members
                mine = self.spans[other]
                for dropped in mine[span.level:]:
                    del dropped.members[other]
                    if not dropped.members:
                        del self.levels[dropped.level][id(dropped)]
                del mine[span.level:]
                self.starts[other] = span.start
            elif not span.members:
                del self.levels[span.level][id(span)]
        while self.levels and not self.levels[-1]:
            self.levels.pop()

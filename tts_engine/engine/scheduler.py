"""Continuous batching over the radix-cached KV pool.

Every step packs one token for each decoding sequence, then fills the rest of the token budget
with prefill work (whole prompts, or chunks of long ones). When the pool runs short it first
evicts cached-but-unused prefixes, then preempts the most recently admitted running sequence:
its tokens go into the cache and it waits to be recomputed (cheaply, if its prefix survives).
A request's other samples fork off its first once that one's prompt is computed.

The batch says what the runner's slot table needs besides the step's own tokens: rows to fill
from the tree (a context admitted on a cached prefix) and rows to copy (forks). The scheduler
never waits for the step before it: a sequence that sampled a token in the last step decodes it
in this one (`Sequence.in_flight`), whether or not that token turns out to finish it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tts_engine.config import EngineConfig
from tts_engine.engine.cache import Node, Prefix, RadixCache, SlotAllocator
from tts_engine.engine.sequence import Sequence, Status
from tts_engine.engine.stats import EngineStats


@dataclass
class Chunk:
    """Prompt tokens start..end of seq, computed this step into `slots`, and what that yields
    (Sequence.outputs_after)."""
    seq: Sequence
    start: int
    end: int
    slots: list[int]
    samples: bool = field(init=False)      # the sequence samples its next token from the chunk's last row
    keep: list[int] = field(init=False)    # positions whose hidden states are kept

    def __post_init__(self):
        self.samples, self.keep = self.seq.outputs_after(self.start, self.end)


@dataclass
class Fork:
    """Siblings that start on parent's computed prompt: they copy its first `length` slot-table
    entries and sample their first token from its logits row."""
    parent: Sequence
    siblings: list[Sequence]
    length: int


@dataclass
class ScheduledBatch:
    decode: list[Sequence] = field(default_factory=list)       # one new token each; all sample
    decode_lens: list[int] = field(default_factory=list)       # their contexts, the new token included
    decode_slots: list[int] = field(default_factory=list)      # where each new token's K/V go
    prefill: list[Chunk] = field(default_factory=list)
    forks: list[Fork] = field(default_factory=list)
    # (table row, tree node): the row's first node.depth entries are the tree's slots on the path
    # to node (a context admitted on a cached prefix, or a row that adopted the tree's copies)
    fills: list[tuple[int, Node]] = field(default_factory=list)
    # what each decode row's attention reads (set by the runner when it plans the step, for
    # engine/traffic.py's counts): its own context tokens, and the cascade spans read once for
    # several rows (tokens, rows)
    decode_own: list[int] | None = None
    decode_shared: list[tuple[int, list[int]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)

    @property
    def sampling(self) -> list[Sequence]:
        """The sequences that sample a token after this step: decode rows, prefill rows, then the
        forked siblings."""
        return self.decode + [c.seq for c in self.prefill if c.samples] + [
            s for f in self.forks for s in f.siblings]

    @property
    def kept(self) -> list[tuple[Sequence, int]]:
        """(sequence, position) of every hidden state kept this step, in the order of their rows."""
        return [(c.seq, p) for c in self.prefill for p in c.keep]


class Scheduler:

    def __init__(self, config: EngineConfig, num_slots: int, max_model_len: int):
        self.allocator = SlotAllocator(num_slots)
        self.cache = RadixCache(self.allocator)
        self.enable_prefix_caching = config.enable_prefix_caching
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_num_seqs = config.max_num_seqs
        self.max_model_len = max_model_len
        self.free_rows = list(range(self.max_num_seqs - 1, -1, -1))   # rows of the runner's slot table
        self.evict_batch = max(1, min(256, num_slots // 64))
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []      # admission order; the newest is preempted first
        self.stats = EngineStats()      # the engine's counters; it replaces them on reset

    @property
    def kv_tokens_in_use(self) -> int:
        return self.allocator.num_slots - self.allocator.num_free

    def add(self, group: list[Sequence]) -> None:
        """Queue the n samples of one request. With prefix caching only the first is prefilled;
        the others fork from it once its prompt is computed (see `_fork`)."""
        self.stats.prompt_tokens += sum(s.num_prompt_tokens for s in group)
        if self.enable_prefix_caching:
            group[0].forks = group[1:]
            self.waiting.append(group[0])
        else:
            self.waiting.extend(group)

    def _fork(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Start seq's waiting siblings on its prompt, computed in this step: they share every K/V
        slot (all in the tree after `publish`) and sample from seq's logits row. Siblings beyond
        max_num_seqs wait at the head of the queue; their prompt is then a cache hit but the last
        token. Runs after the step's allocations: slots that `publish` frees (where the tree had
        the same tokens) are written by this step but handed out only in a later one."""
        room = max(0, self.max_num_seqs - len(self.running))
        siblings, later, seq.forks = seq.forks[:room], seq.forks[room:], []
        self.waiting.extendleft(reversed(later))
        if self.publish(seq):
            batch.fills.append((seq.row, seq.node))
        for sib in siblings:
            sib.row = self.free_rows.pop()
            sib.own, sib.node = [], seq.node
            sib.num_computed = sib.num_tree = seq.num_computed
            sib.admitted, sib.num_cached_prompt_tokens = True, sib.num_prompt_tokens
            self.cache.lock(sib.node)
            self.stats.cached_prompt_tokens += sib.num_prompt_tokens
            sib.status = Status.RUNNING
            self.running.append(sib)
        if siblings:
            batch.forks.append(Fork(seq, siblings, seq.num_computed))

    def publish(self, seq: Sequence) -> bool:
        """Move all of seq's computed K/V into the tree. Where the tree already holds the same
        tokens, seq adopts the tree's slots and frees its own copies: then True (its table row
        must be filled from the tree)."""
        n, t = seq.num_computed, seq.num_tree
        if t == n:
            return False
        existed, node = self.cache.insert(seq.token_ids[t:n], seq.own, seq.node)
        if existed:
            self.allocator.free(seq.own[:existed])
        self.cache.lock(node)
        self.cache.unlock(seq.node)
        seq.node, seq.num_tree, seq.own = node, n, []
        return existed > 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------ scheduling
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        scheduled: set[int] = set()      # sequences in this batch can no longer be preempted
        budget = self.max_num_batched_tokens
        # Each sequence whose context is computed decodes one token, unless it only encodes or its
        # token in flight leaves no room for another (then that token finishes it).
        decoding, prefilling, max_len = [], [], self.max_model_len
        for s in self.running:
            if s.is_prefilling:
                prefilling.append(s)
            elif s.generates and not s.is_full(max_len, s.in_flight):
                decoding.append(s)
        room = self.allocator.num_free >= len(decoding)    # the common case: nobody is preempted
        take = self.allocator.take
        for seq in decoding:
            if not room and (seq.status is not Status.RUNNING or not self._reserve(1, seq, scheduled)):
                continue   # seq was preempted (for an earlier one, or for itself)
            seq.own.append(slot := take())
            seq.num_computed += 1
            batch.decode.append(seq)
            batch.decode_slots.append(slot)
            scheduled.add(seq.seq_id)
        batch.decode_lens = [s.num_computed for s in batch.decode]
        budget -= len(batch.decode)
        # Sequences part-way through a chunked prefill, then new ones.
        for seq in prefilling:
            if budget <= 0:
                break
            if seq.status is Status.RUNNING:
                budget -= self._schedule_prefill(seq, budget, batch, scheduled, preempt=True)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.in_flight:
                break      # preempted with a token still in flight: it must reach the host first
            self._admit(seq)
            node = seq.node
            used = self._schedule_prefill(seq, budget, batch, scheduled, preempt=False)
            if used == 0:
                self._release(seq, keep_tokens=False)
                break
            self.waiting.popleft()
            if node.parent is not None:
                batch.fills.append((seq.row, node))
            if not seq.admitted:
                seq.admitted = True
                seq.num_cached_prompt_tokens = seq.num_computed - used   # the matched prefix
                self.stats.cached_prompt_tokens += seq.num_cached_prompt_tokens
            seq.status = Status.RUNNING
            self.running.append(seq)
            budget -= used
        for seq in batch.sampling:
            if seq.forks:       # (a prompt whose last token is fed by a decode step forks there)
                self._fork(seq, batch)
        for seq in batch.sampling:
            seq.in_flight += 1
        return batch

    def _admit(self, seq: Sequence) -> None:
        """Match the longest cached prefix and lock it. At least the last token is always computed,
        since its logits are needed to sample the next token."""
        if self.enable_prefix_caching:
            node = self.cache.match_prefix(seq.token_ids, seq.cache_limit, seq.after)
        else:
            node = self.cache.root
        self.cache.lock(node)
        seq.node, seq.own = node, []
        seq.num_computed = seq.num_tree = node.depth
        seq.row = self.free_rows.pop()

    def _schedule_prefill(self, seq: Sequence, budget: int, batch: ScheduledBatch, scheduled: set[int],
                          preempt: bool) -> int:
        start = seq.num_computed
        end = min(len(seq), start + budget)
        if not self._reserve(end - start, seq, scheduled, preempt):
            if seq.status is not Status.RUNNING and preempt:
                return 0   # seq itself was preempted
            end = start + self.allocator.num_free
            if end <= start:
                return 0
        slots = self.allocator.alloc(end - start)
        seq.own += slots
        seq.num_computed = end
        if (
            self.enable_prefix_caching
            and seq.num_tree == start
            and self.cache.cached_len(seq.token_ids[start:end], seq.node) == 0
        ):
            # Publish the chunk now: sequences admitted later in this same step reuse it, since every
            # layer stores all new K/V before any attention reads them.
            _, node = self.cache.insert(seq.token_ids[start:end], slots, seq.node)
            self.cache.lock(node)
            self.cache.unlock(seq.node)
            seq.node, seq.num_tree, seq.own = node, end, []
        n = end - start
        if seq.num_preemptions:
            self.stats.recomputed_tokens += n
        else:
            self.stats.computed_prompt_tokens += n
        batch.prefill.append(Chunk(seq, start, end, slots))
        scheduled.add(seq.seq_id)
        return n

    def _reserve(self, n: int, keep: Sequence, scheduled: set[int], preempt: bool = True) -> bool:
        """Make n slots free: evict unused cache entries, then (if allowed) preempt running
        sequences, newest first, but none already in this step's batch. False if room can't be
        made or `keep` itself had to be preempted. Evictions free a batch of slots at a time, so a
        full pool does not evict once per decode token."""
        if self.allocator.num_free < n:
            self.cache.evict(max(n - self.allocator.num_free, self.evict_batch))
        while preempt and self.allocator.num_free < n and self.running:
            victim = self.running[-1]
            if victim.seq_id in scheduled:
                return False
            self.preempt(victim)
            if victim is keep:
                return False
            self.cache.evict(n - self.allocator.num_free)
        return self.allocator.num_free >= n

    def preempt(self, seq: Sequence) -> None:
        self.stats.preemptions += 1
        seq.num_preemptions += 1
        self.running.remove(seq)
        self._release(seq, keep_tokens=True)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    # ------------------------------------------------------------ finishing
    def finish(self, seq: Sequence) -> None:
        """seq is done (it may have been preempted since its last token was scheduled)."""
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
            self._release(seq, keep_tokens=True)
        seq.status = Status.FINISHED

    def cancel(self, seq: Sequence) -> None:
        """Finish seq before its end (Engine.cancel). A sample still waiting for its leader's
        prompt leaves the leader's forks; the waiting forks of a cancelled leader are queued on
        their own, at the head (their prompt is then a cache hit as far as the leader computed)."""
        if seq.status is Status.WAITING and not seq.admitted:
            for leader in (*self.waiting, *self.running):
                if seq in leader.forks:
                    leader.forks.remove(seq)
                    seq.status = Status.FINISHED
                    return
        if seq.forks:
            self.waiting.extendleft(reversed(seq.forks))
            seq.forks = []
        self.finish(seq)

    def _release(self, seq: Sequence, keep_tokens: bool) -> None:
        """Hand the sequence's K/V to the cache (or free it) and drop its lock."""
        if keep_tokens and self.enable_prefix_caching:
            self.publish(seq)                          # afterwards no slot of seq is private
            seq.published = Prefix(seq.node, seq.token_ids)
        self.allocator.free(seq.own)
        self.cache.unlock(seq.node)
        self.free_rows.append(seq.row)
        seq.node, seq.own, seq.num_computed, seq.num_tree, seq.row = None, [], 0, 0, None

    def abort_all(self) -> None:
        """Drop every sequence and the whole cache (after an interrupted step the cache may list
        slots whose K/V were never written)."""
        for seq in self.running + list(self.waiting):
            if seq.node is not None:
                self.cache.unlock(seq.node)
                self.allocator.free(seq.own)
            seq.status, seq.in_flight = Status.FINISHED, 0
        self.running.clear()
        self.waiting.clear()
        self.cache.clear()
        self.free_rows = list(range(self.max_num_seqs - 1, -1, -1))

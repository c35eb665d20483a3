"""Model runner: owns the model and the KV pool, turns a scheduled batch into tensors, runs the
forward pass and returns logits for the sequences that sample this step."""
from __future__ import annotations

import torch

from tts_engine.engine.cuda_graph import DecodeGraphs
from tts_engine.engine.scheduler import ScheduledBatch
from tts_engine.engine.sequence import Sequence
from tts_engine.models.attention import AttentionMetadata
from tts_engine.models.llama import CausalLM


class ModelRunner:
    def __init__(self, model: CausalLM, num_slots: int, dtype: torch.dtype, device: torch.device,
                 cascade_min_work: int | None = 1024):
        cfg = model.cfg
        self.model, self.device = model, device
        # A group uses cascade decode when sharers x shared tokens reaches this (None: never).
        # benchmarks/bench_kernels.py --cpu (32/8 heads): cascade pays from about 1-2k (8 x 256,
        # 4 x 1024, 64 x 64) and costs up to 3x on small groups; 1024 won end to end on the CPU
        # beam benchmark (4 sharers x 358-650 tokens, SmolLM2's 9/3 heads). Re-measure on GPUs.
        self.cascade_min_work = cascade_min_work
        # One tensor for the whole pool: [layers, K/V, slots, kv_heads, head_dim]. The extra last
        # slot belongs to no sequence: padding rows of CUDA-graph batches write there.
        self.kv_cache = torch.zeros(cfg.num_layers, 2, num_slots + 1, cfg.num_kv_heads, cfg.head_dim,
                                    dtype=dtype, device=device)
        self.scratch_slot = num_slots
        self.graphs: DecodeGraphs | None = None
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.attn.k_cache = self.kv_cache[i, 0]
            layer.self_attn.attn.v_cache = self.kv_cache[i, 1]

    def prepare(self, batch: ScheduledBatch):
        """Pack the batch: (input_ids, positions, metadata, rows to sample, (seq, position, row) to keep)."""
        ids, pos, slot_map, sample_rows, hidden_rows = [], [], [], [], []
        for seq in batch.decode:
            n = seq.num_computed - 1
            ids.append(seq.token_ids[n])
            pos.append(n)
            slot_map.append(seq.slots[n])
            sample_rows.append(len(ids) - 1)
        q_lens, q_start, kv_lens_p = [], [], []
        for seq, start, end in batch.prefill:
            q_start.append(len(ids) - len(batch.decode))
            ids += seq.token_ids[start:end]
            pos += range(start, end)
            slot_map += seq.slots[start:end]
            q_lens.append(end - start)
            kv_lens_p.append(end)
            if seq.hidden_positions is not None:
                hidden_rows += [(seq, p, len(ids) - end + p) for p in seq.hidden_positions if start <= p < end]
            elif end == len(seq):
                sample_rows.append(len(ids) - 1)
        dev = self.device
        cascade, starts = self.cascade_groups(batch.decode)
        block_table = _padded([s.slots[st:s.num_computed] for s, st in zip(batch.decode, starts)], dev)
        kv_lens = torch.tensor([s.num_computed - st for s, st in zip(batch.decode, starts)], dtype=torch.long,
                               device=dev)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slot_map, device=dev),
            num_decode=len(batch.decode),
            decode_block_table=block_table,
            decode_kv_lens=kv_lens,
            cascade_levels=cascade,
            prefill_block_table=_padded([seq.slots[:end] for seq, _, end in batch.prefill], dev),
            prefill_q_start=torch.tensor(q_start, dtype=torch.long, device=dev),
            prefill_q_lens=torch.tensor(q_lens, dtype=torch.long, device=dev),
            prefill_kv_lens=torch.tensor(kv_lens_p, dtype=torch.long, device=dev),
            prefill_max_q_len=max(q_lens, default=0),
        )
        return torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), meta, sample_rows, hidden_rows

    def capture_decode_graphs(self, max_batch_size: int, max_model_len: int) -> None:
        """Capture CUDA graphs of decode steps for batch sizes up to max_batch_size."""
        self.graphs = DecodeGraphs(self.model, self.scratch_slot, max_batch_size, max_model_len, self.device)

    def cascade_groups(self, decode: list[Sequence]) -> tuple[list | None, list[int]]:
        """Cascade levels for this decode step, and per sequence where its own part of the KV starts.
        Level 1: the prefix all decoding sequences share (the problem prompt of a search).
        Level 2: sequences holding the same tree node (the samples of a request, the children of a
        beam) share what lies past it. A level's group is formed only when sharers x shared tokens
        reach `cascade_min_work`; anything not in a group is read as the sequence's own suffix."""
        starts = [0] * len(decode)
        if self.cascade_min_work is None or self.model.cfg.sliding_window is not None or len(decode) < 2:
            return None, starts
        levels = []
        root = _common_prefix_len([s.slots[:s.num_tree] for s in decode])
        if len(decode) * root >= self.cascade_min_work:
            levels.append(self._level([list(range(len(decode)))], [decode[0].slots[:root]]))
            starts = [root] * len(decode)
        else:
            root = 0
        by_node: dict[int, list[int]] = {}
        for i, s in enumerate(decode):
            if s.num_tree > root:
                by_node.setdefault(id(s.node), []).append(i)
        groups = [rows for rows in by_node.values()
                  if len(rows) >= 2 and len(rows) * (decode[rows[0]].num_tree - root) >= self.cascade_min_work]
        if groups:
            levels.append(self._level(groups, [decode[r[0]].slots[root:decode[r[0]].num_tree] for r in groups]))
            for rows in groups:
                for i in rows:
                    starts[i] = decode[rows[0]].num_tree
        return levels or None, starts

    def _level(self, groups: list[list[int]], prefixes: list[list[int]]):
        """(prefix table, prefix lengths, rows padded with -1) of one cascade level."""
        width = max(len(r) for r in groups)
        rows = torch.tensor([r + [-1] * (width - len(r)) for r in groups], device=self.device)
        return _padded(prefixes, self.device), torch.tensor([len(p) for p in prefixes], device=self.device), rows

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[list[Sequence], torch.Tensor]:
        """Forward the batch; return the sequences that sample now and their logits [n, vocab]
        (float32). Encode-only sequences get their requested hidden states instead."""
        input_ids, positions, meta, rows, hidden_rows = self.prepare(batch)
        if self.graphs is not None and not batch.prefill and meta.cascade_levels is None \
                and self.graphs.can_run(len(batch.decode)):
            logits = self.graphs.run(input_ids, positions, meta.slot_mapping, meta.decode_block_table,
                                     meta.decode_kv_lens)
            return list(batch.decode), logits
        hidden = self.model(input_ids, positions, meta)
        for seq, p, row in hidden_rows:
            seq.hidden_states[p] = hidden[row].clone()
        logits = self.model.compute_logits(hidden[rows])
        seqs = list(batch.decode) + [s for s, _, e in batch.prefill if e == len(s) and s.hidden_positions is None]
        return seqs, logits


def _padded(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """Slot lists as one [len(rows), longest] tensor, padded with slot 0 (masked by lengths)."""
    width = max((len(r) for r in rows), default=1)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device).view(len(rows), width)


def _common_prefix_len(lists: list[list[int]]) -> int:
    """Length of the longest prefix shared by all lists (binary search over slice comparisons)."""
    first = lists[0]
    lo, hi = 0, min(len(x) for x in lists)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if all(x[:mid] == first[:mid] for x in lists[1:]):
            lo = mid
        else:
            hi = mid - 1
    return lo

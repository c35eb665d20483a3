"""Model runner: owns the model and the KV pool, turns a scheduled batch into tensors, runs the
forward pass and returns the head's output for the sequences that sample this step and the hidden
states the batch keeps."""
from __future__ import annotations

import torch

from tts_engine.config import EngineConfig
from tts_engine.engine.cache import cascade_levels
from tts_engine.engine.cuda_graph import DecodeGraphs
from tts_engine.engine.scheduler import ScheduledBatch
from tts_engine.engine.sequence import Sequence
from tts_engine.engine.upload import upload, upload_one
from tts_engine.kernels.spans import Spans
from tts_engine.models.attention import AttentionMetadata
from tts_engine.models.model import Model


class ModelRunner:
    def __init__(self, model: Model, config: EngineConfig, num_slots: int, max_model_len: int):
        cfg = model.cfg
        weight = next(model.parameters())
        dtype, device, max_num_seqs = weight.dtype, weight.device, config.max_num_seqs
        self.model, self.device = model, device
        # A span shared by several decoding sequences is read once for all of them (cascade) when
        # sharers x span tokens reaches EngineConfig.cascade_min_work (None: never). Its default,
        # 2048: benchmarks/bench_kernels.py --cpu (32/8 heads, slots gathered once per step): cascade
        # breaks even at 2k (8 x 256) and pays from 4k (4 x 1024, 16 x 256, 64 x 64); it costs up to
        # 3.6x on small groups. End to end on the CPU beam benchmark (SmolLM2), 2048 and 4096 ran
        # 5-10% faster than 1024 or no cascade (two runs each; this VM's noise is of that order).
        # Re-measure on GPUs.
        self.cascade_min_work = config.cascade_min_work
        # One tensor for the whole pool: [layers, K/V, slots, kv_heads, head_dim]. The extra last
        # slot belongs to no sequence: padding rows of CUDA-graph batches write there.
        self.kv_cache = torch.zeros(cfg.num_layers, 2, num_slots + 1, cfg.num_kv_heads, cfg.head_dim,
                                    dtype=dtype, device=device)
        self.scratch_slot = num_slots
        # Slot table (SGLang's req_to_token): row r lists the slots of the running sequence that owns
        # it. It stays on the device; each step writes only entries that changed (new tokens, and
        # rows adopted from the cache), instead of uploading every context again.
        # The extra last row is all scratch slots: CUDA-graph padding rows read it.
        width = min(max_model_len, num_slots)
        self.slot_table = torch.zeros(max_num_seqs + 1, width, dtype=torch.int32, device=device)
        self.pad_row = max_num_seqs
        self.slot_table[self.pad_row] = self.scratch_slot
        self.graphs: DecodeGraphs | None = None
        self.table_entries_written = 0     # slot-table entries uploaded from the host, in all
        self.workspace: dict = {}          # the attention backend's buffers, reused step after step
        layers = model.attention_layers()
        if len(layers) != cfg.num_layers:
            raise RuntimeError(f"{len(layers)} attention modules for {cfg.num_layers} layers")
        for i, attn in enumerate(layers):
            attn.k_cache, attn.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]

    def prepare(self, batch: ScheduledBatch):
        """Pack the batch: (input_ids, positions, metadata, rows to sample, rows to keep), the rows
        in the order of batch.sampling and batch.kept. Every integer the step needs goes to the
        device in one non-blocking copy (upload.py)."""
        t_rows, t_cols, t_slots = self._table_updates(batch.decode + [c.seq for c in batch.prefill])
        ids, pos, slot_map, sample_rows, keep_rows = [], [], [], [], []
        for seq in batch.decode:
            n = seq.num_computed - 1
            ids.append(seq.token_ids[n])
            pos.append(n)
            slot_map.append(seq.slots[n])
            sample_rows.append(len(ids) - 1)
        q_lens, q_start, kv_lens_p = [], [], []
        for c in batch.prefill:
            q_start.append(len(ids) - len(batch.decode))
            ids += c.seq.token_ids[c.start:c.end]
            pos += range(c.start, c.end)
            slot_map += c.seq.slots[c.start:c.end]
            q_lens.append(c.end - c.start)
            kv_lens_p.append(c.end)
            keep_rows += [len(ids) - c.end + p for p in c.keep]
            if c.samples:
                sample_rows.append(len(ids) - 1)
        levels, starts = self.cascade_levels(batch.decode)
        lens = [s.num_computed - st for s, st in zip(batch.decode, starts)]
        level_lists = []
        for groups in levels:
            width = max(len(g.rows) for g in groups)
            level_lists += [[g.table_row for g in groups], [g.start for g in groups],
                            [g.end - g.start for g in groups],
                            [r for g in groups for r in g.rows + [-1] * (width - len(g.rows))]]
        (t_rows, t_cols, t_slots, ids, pos, slot_map, d_rows, d_starts, d_lens, p_rows, p_start, p_lens, p_kv,
         sample_rows, keep_rows, *level_tensors) = upload(
            self.device, t_rows, t_cols, t_slots, ids, pos, slot_map, [s.row for s in batch.decode], starts,
            lens, [c.seq.row for c in batch.prefill], q_start, q_lens, kv_lens_p, sample_rows, keep_rows,
            *level_lists)
        self.table_entries_written += t_slots.numel()
        if t_slots.numel():
            self.slot_table[t_rows, t_cols] = t_slots.to(self.slot_table.dtype)
        cascade = []
        for k, groups in enumerate(levels):
            rows_, starts_, lens_, members = level_tensors[4 * k:4 * k + 4]
            cascade.append(Spans(rows_, starts_, lens_, max(g.end - g.start for g in groups),
                                 members.view(len(groups), -1), workspace=self.workspace))
        meta = AttentionMetadata(
            slot_table=self.slot_table, slot_mapping=slot_map, num_decode=len(batch.decode),
            decode=Spans(d_rows, d_starts, d_lens, max(lens, default=0), workspace=self.workspace),
            cascade_levels=cascade or None,
            prefill_rows=p_rows, prefill_q_start=p_start, prefill_q_lens=p_lens, prefill_kv_lens=p_kv,
            prefill_max_q_len=max(q_lens, default=0))
        return ids, pos, meta, sample_rows, keep_rows

    def copy_rows(self, src: Sequence, dsts: list[Sequence]) -> None:
        """Forked siblings start from their parent's slot-table row: the synced part of it is
        copied on the device (not uploaded again from the host, which for 256 siblings of an 8k
        prompt would be 2M entries); only what the parent lacks follows in the next step."""
        n = src.num_synced
        if n and dsts:
            rows = upload_one(self.device, [d.row for d in dsts])
            self.slot_table[rows, :n] = self.slot_table[src.row, :n]
        for d in dsts:
            d.num_synced = n

    @staticmethod
    def _table_updates(seqs: list[Sequence]) -> tuple[list[int], list[int], list[int]]:
        """(row, column, slot) of every slot-table entry the sequences' rows lack: new tokens, and
        rows rewritten after admission or after adopting the cache's copies of their slots."""
        rows, cols, slots = [], [], []
        for seq in seqs:
            lo, hi = seq.num_synced, seq.num_computed
            if lo < hi:
                rows += [seq.row] * (hi - lo)
                cols += range(lo, hi)
                slots += seq.slots[lo:hi]
                seq.num_synced = hi
        return rows, cols, slots

    def capture_decode_graphs(self, max_batch_size: int, capture: bool = True) -> None:
        """Capture CUDA graphs of decode steps for batch sizes up to max_batch_size (capture=False:
        run the graphs' static-buffer steps eagerly, which tests them on a CPU)."""
        self.graphs = DecodeGraphs(self.model, self.slot_table, self.pad_row, self.scratch_slot,
                                   max_batch_size, self.device, capture)

    def cascade_levels(self, decode: list[Sequence]):
        """Shared spans of the decoding sequences (cache.cascade_levels), or none when cascade is
        off, the model has a sliding window, or fewer than two sequences decode."""
        if self.cascade_min_work is None or self.model.cfg.sliding_window is not None or len(decode) < 2:
            return [], [0] * len(decode)
        return cascade_levels([s.node for s in decode], [s.row for s in decode], self.cascade_min_work)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward the batch. Returns the head's output ([len(batch.sampling), ...], float32) and
        the final hidden states kept ([len(batch.kept), hidden], None when none are)."""
        input_ids, positions, meta, sample_rows, keep_rows = self.prepare(batch)
        if self.graphs is not None and not batch.prefill and self.graphs.can_run(meta):
            return self.graphs.run(input_ids, positions, meta), None
        hidden = self.model(input_ids, positions, meta)
        kept = hidden.index_select(0, keep_rows) if keep_rows.numel() else None
        return self.model.compute_logits(hidden.index_select(0, sample_rows)), kept

"""CUDA graphs of decode steps, captured once per batch size (nano-vllm's recipe).

A decode step of a 1B model is ~16 layers x a dozen kernels; launching them from Python costs more
than running them at small batch sizes. A graph replays the whole step in one launch. Graphs need
static shapes and addresses, so every input lives in a buffer sized for the largest batch, and rows
beyond the real batch read and write a scratch KV slot that no sequence owns (through a padding row
of the slot table). The slot table itself is the runner's persistent tensor, so a step copies only
per-row spans, not contexts.

Tree search decodes with cascade levels almost every step, so each batch size also gets a cascade
graph with MAX_LEVELS static levels of batch/2 groups each (disjoint groups of >= 2 rows cannot be
more); unused groups are empty and their tiles exit at once (see attention_triton.plan_level).
Steps with prefill tokens or more levels run eagerly.
"""
from __future__ import annotations

import torch

from tts_engine.kernels.spans import Spans
from tts_engine.models.attention import AttentionMetadata
from tts_engine.models.model import Model

MAX_LEVELS = 3


def graph_batch_sizes(max_bs: int) -> list[int]:
    return [b for b in (1, 2, 4, 8) if b <= max_bs] + list(range(16, max_bs + 1, 16))


class DecodeGraphs:
    def __init__(self, model: Model, slot_table: torch.Tensor, pad_row: int, scratch_slot: int, max_bs: int,
                 device: torch.device, capture: bool = True):
        """capture=False runs the same static-buffer steps eagerly (tests the buffer handling on a CPU)."""
        self.model, self.slot_table = model, slot_table
        self.sizes = graph_batch_sizes(max_bs)
        self.max_bs = n = self.sizes[-1]
        self.capture = capture
        long = dict(dtype=torch.long, device=device)
        # per-row inputs in one tensor, so that a step fills them with one copy (and one for padding)
        self.pad = torch.tensor([0, 0, scratch_slot, pad_row, 0, 1], **long)[:, None]
        self.inputs = self.pad.repeat(1, n)
        self.input_ids, self.positions, self.slot_mapping, self.rows, self.starts, self.lens = self.inputs
        g = max(1, n // 2)
        self.level_bufs = [(torch.zeros(g, **long), torch.zeros(g, **long), torch.zeros(g, **long),
                            torch.full((g, n), -1, **long)) for _ in range(MAX_LEVELS)]
        width = slot_table.shape[1]
        self.decode = {
            bs: Spans(self.rows[:bs], self.starts[:bs], self.lens[:bs], width) for bs in self.sizes
        }
        self.levels = {bs: [Spans(rows[:bs // 2], starts[:bs // 2], lens[:bs // 2], width, grp[:bs // 2, :bs])
                            for rows, starts, lens, grp in self.level_bufs]
                       for bs in self.sizes if bs >= 2}
        # one output buffer for all graphs (a buffer per graph would cost ~1 GB for a 128k vocabulary)
        self.logits = torch.zeros(n, model.cfg.vocab_size, dtype=torch.float32, device=device)
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        if capture:
            self._capture(device)

    def _meta(self, bs: int, cascade: bool) -> AttentionMetadata:
        empty = self.lens[:0]
        return AttentionMetadata(
            slot_table=self.slot_table, slot_mapping=self.slot_mapping[:bs], num_decode=bs,
            decode=self.decode[bs], cascade_levels=self.levels[bs] if cascade else None,
            prefill_rows=empty, prefill_q_start=empty, prefill_q_lens=empty, prefill_kv_lens=empty,
            prefill_max_q_len=0)

    def _forward(self, bs: int, cascade: bool) -> torch.Tensor:
        # (a fresh metadata, so the backend's plan is made from these buffers: while capturing,
        # recorded into the graph rather than frozen from the warm-up step)
        hidden = self.model(self.input_ids[:bs], self.positions[:bs], self._meta(bs, cascade))
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def _capture(self, device: torch.device) -> None:
        pool = None
        for bs in reversed(self.sizes):          # largest first, so smaller graphs reuse its memory
            for cascade in (False, True) if bs >= 2 else (False,):
                self._forward(bs, cascade)       # compiles the Triton kernels for these shapes
                torch.cuda.synchronize(device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.logits[:bs] = self._forward(bs, cascade)
                pool = graph.pool()
                self.graphs[bs, cascade] = graph
                self._check(bs, cascade, device)

    def _check(self, bs: int, cascade: bool, device: torch.device) -> None:
        """Replay against an eager step on inputs set after the capture, so that a graph that froze
        anything from capture time (such as the tile plan) fails here instead of decoding wrongly.
        Every row's own span is the scratch slot; with cascade, a level also groups all rows over
        slot 0 (through row 0 of the table, which no sequence owns while graphs are captured)."""
        if cascade:
            self.slot_table[0, 0] = 0
            level = self.levels[bs][0]
            level.table_rows[0], level.starts[0], level.lens[0] = 0, 0, 1
            level.group_rows[0] = torch.arange(bs, device=device)
        eager = self._forward(bs, cascade)
        self.logits.zero_()
        self.graphs[bs, cascade].replay()
        torch.cuda.synchronize(device)
        if cascade:
            level.lens.zero_()
            level.group_rows.fill_(-1)
        if not torch.allclose(self.logits[:bs], eager, rtol=1e-3, atol=1e-3):
            raise RuntimeError(
                f"CUDA graph for batch size {bs} (cascade={cascade}) does not reproduce the eager step"
            )

    def can_run(self, meta: AttentionMetadata) -> bool:
        return meta.num_decode <= self.max_bs and len(meta.cascade_levels or ()) <= MAX_LEVELS

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Replay the smallest captured graph that holds the batch; returns logits [n, vocab]."""
        n = input_ids.shape[0]
        bs = next(b for b in self.sizes if b >= n)
        self.inputs[:, :n] = torch.stack([input_ids, positions, meta.slot_mapping, meta.decode.table_rows,
                                          meta.decode.starts, meta.decode.lens])
        self.inputs[:, n:bs] = self.pad      # padding rows: a one-token context at the scratch slot
        cascade = bool(meta.cascade_levels)
        if cascade:
            for k, level in enumerate(self.levels[bs]):
                level.lens.zero_()
                level.group_rows.fill_(-1)
                if k < len(meta.cascade_levels):
                    src = meta.cascade_levels[k]
                    ng, width = src.group_rows.shape
                    level.table_rows[:ng] = src.table_rows
                    level.starts[:ng] = src.starts
                    level.lens[:ng] = src.lens
                    level.group_rows[:ng, :width] = src.group_rows
        if self.capture:
            self.graphs[bs, cascade].replay()
        else:
            self.logits[:bs] = self._forward(bs, cascade)
        return self.logits[:n]

"""CUDA graphs of decode steps, captured once per batch size (nano-vllm's recipe).

A decode step of a 1B model is ~16 layers x a dozen kernels; launching them from Python costs more
than running them at small batch sizes. A graph replays the whole step in one launch. Graphs need
static shapes and addresses, so every input lives in a buffer sized for the largest batch, the
slot table is as wide as the longest possible sequence, and rows beyond the real batch read and
write a scratch KV slot that no sequence owns. Steps with prefill tokens or cascade groups run
eagerly (their shapes vary).
"""
from __future__ import annotations

import torch

from tts_engine.models.attention import AttentionMetadata
from tts_engine.models.llama import CausalLM


def graph_batch_sizes(max_bs: int) -> list[int]:
    return [b for b in (1, 2, 4, 8) if b <= max_bs] + list(range(16, max_bs + 1, 16))


class DecodeGraphs:
    def __init__(self, model: CausalLM, scratch_slot: int, max_bs: int, table_width: int, device: torch.device):
        self.model = model
        self.sizes = graph_batch_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        self.scratch_slot = scratch_slot
        n = self.max_bs
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), scratch_slot, dtype=torch.long, device=device)
        # int32: a 131k-token context x 256 rows is 134 MB (the kernels widen slots to int64)
        self.block_table = torch.full((n, table_width), scratch_slot, dtype=torch.int32, device=device)
        self.kv_lens = torch.ones(n, dtype=torch.long, device=device)
        # one output buffer for all graphs (a buffer per graph would cost ~1 GB for a 128k vocabulary)
        self.logits = torch.empty(n, model.cfg.vocab_size, dtype=torch.float32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._capture(device)

    def _meta(self, bs: int) -> AttentionMetadata:
        empty = self.kv_lens[:0]
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs], num_decode=bs, decode_block_table=self.block_table[:bs],
            decode_kv_lens=self.kv_lens[:bs], cascade_levels=None,
            prefill_block_table=self.block_table[:0], prefill_q_start=empty, prefill_q_lens=empty,
            prefill_kv_lens=empty, prefill_max_q_len=0)

    def _forward(self, bs: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:bs], self.positions[:bs], self._meta(bs))
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def _capture(self, device: torch.device) -> None:
        pool = None
        for bs in reversed(self.sizes):          # largest first, so smaller graphs reuse its memory
            eager = self._forward(bs)            # also compiles the Triton kernels for these shapes
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[:bs] = self._forward(bs)
            pool = graph.pool()
            self.graphs[bs] = graph
            self.logits.zero_()
            graph.replay()
            torch.cuda.synchronize(device)
            # Every row reads only the scratch slot here, so the replay must equal the eager step.
            if not torch.allclose(self.logits[:bs], eager, rtol=1e-3, atol=1e-3):
                raise RuntimeError(f"CUDA graph for batch size {bs} does not reproduce the eager step")

    def can_run(self, num_decode: int) -> bool:
        return num_decode <= self.max_bs

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
            block_table: torch.Tensor, kv_lens: torch.Tensor) -> torch.Tensor:
        """Replay the smallest captured graph that holds the batch; returns logits [n, vocab]."""
        n = input_ids.shape[0]
        bs = next(b for b in self.sizes if b >= n)
        self.input_ids[:n] = input_ids
        self.positions[:n] = positions
        self.slot_mapping[:n] = slot_mapping
        self.block_table[:n, :block_table.shape[1]] = block_table
        self.kv_lens[:n] = kv_lens
        # padding rows: a one-token context at the scratch slot
        self.slot_mapping[n:bs] = self.scratch_slot
        self.block_table[n:bs, 0] = self.scratch_slot
        self.kv_lens[n:bs] = 1
        self.input_ids[n:bs] = 0
        self.positions[n:bs] = 0
        self.graphs[bs].replay()
        return self.logits[:n]

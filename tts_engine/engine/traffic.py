"""Bytes a step moves through device memory, counted from what it computes (issue 29's memory
traffic, beside FLOPs: decode is bound by these reads, and prefix sharing cuts exactly them).

A step reads the decoder's weights once (every layer and the final norm), gathers one embedding
row per token, and reads the head's weights once if it computes any head row (the tied LM head
is the embedding matrix, read whole). Attention reads each sequence's K/V: a prefill chunk
[start, end) reads positions [0, end) (with a sliding window, those its queries see), a decode
token its context, except the spans that cascade reads once for all of their sharers (each
sharer is charged its part); every computed token writes its K/V once. A step's shared reads
(the weights, a cascade span) are split among the sequences that use them, so the bytes of all
sequences add up to the step's. (Under overlap a step may hold the row of a sequence the step
before finished: the live rows share that step's reads, and a step of wasted rows only is left
out of the counts.)
"""
from __future__ import annotations

from dataclasses import dataclass

from tts_engine.models.model import Model


@dataclass(frozen=True)
class Traffic:
    decoder_weights: int      # bytes read once per step
    embedding_row: int        # bytes gathered per token
    head_weights: int         # bytes read once per step (or head call) with head rows
    kv_token: int             # K and V of one token over all layers
    window: int | None        # sliding window (keys a query sees), None: the whole context

    @classmethod
    def of(cls, model: Model, kv_itemsize: int) -> Traffic:
        cfg = model.cfg
        embedding = model.model.embed_tokens.weight
        table = embedding.numel() * embedding.element_size()
        everything = sum(p.numel() * p.element_size() for p in model.parameters())
        head = sum(p.numel() * p.element_size() for p in model.head.parameters())
        decoder = everything - head - table
        # (a tied LM head has no weights of its own: it reads the embedding table)
        return cls(decoder, cfg.hidden_size * embedding.element_size(), head or table,
                   2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * kv_itemsize, cfg.sliding_window)

    def prefill_keys(self, start: int, end: int) -> int:
        """Positions whose K/V a chunk of positions [start, end) reads."""
        return end if self.window is None else end - max(0, start - self.window + 1)

    def decode_keys(self, n: int) -> int:
        """Positions whose K/V one decode token with a context of n tokens (itself included) reads."""
        return n if self.window is None else min(n, self.window)

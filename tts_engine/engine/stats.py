"""Counters of one engine since it was built or since its last reset (a reset builds a new object)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    # Prompt tokens of the n samples of a request each count: cached + computed = prompt tokens.
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    computed_prompt_tokens: int = 0
    recomputed_tokens: int = 0          # work redone after a preemption
    generated_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    flops: int = 0                      # forward FLOPs of everything computed (flops.py)
    weight_bytes: float = 0.0           # bytes moved (engine/traffic.py)
    kv_read_bytes: float = 0.0
    kv_write_bytes: float = 0.0
    kv_tokens_peak: int = 0

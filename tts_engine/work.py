"""What computing something cost: tokens and FLOPs, computed and saved. The engine gives one per
request, the PRM one per scored trajectory, and a search adds them up per problem."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Work:
    # Prompt tokens of each sample of a request count: cached + computed = prompt tokens (computed
    # also holds what a preemption made the engine compute again).
    prompt_tokens: int = 0
    cached_tokens: int = 0
    computed_tokens: int = 0
    generated_tokens: int = 0
    flops: int = 0                # forward FLOPs of what was computed, heads included (flops.py)
    saved_flops: int = 0          # what the cached prompt prefixes would have cost
    # bytes moved through device memory (engine/traffic.py): a step's shared reads are split among
    # its sequences, so these are fractional
    weight_bytes: float = 0.0     # weights read
    kv_read_bytes: float = 0.0    # K/V read by attention
    kv_write_bytes: float = 0.0   # K/V written

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes

    def __add__(self, other: Work) -> Work:
        if not isinstance(other, Work):
            return NotImplemented
        return Work(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __iadd__(self, other: Work) -> Work:
        if not isinstance(other, Work):
            return NotImplemented
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

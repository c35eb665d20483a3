"""Attention spans: which stretches of the slot table decode rows attend to. Both backends
(attention_ref, attention_triton) and the runner speak this type."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Spans:
    """Stretches of the slot table that decode rows attend to: span j is lens[j] slots of table row
    table_rows[j] from column starts[j] on (max_len >= every lens[j]). Without group_rows, span b
    belongs to decode row b. With group_rows ([spans, max rows], padded with -1) it is a cascade
    level: span j is shared by the rows group_rows[j] and read once for all of them.
    The runner makes new Spans every step; `workspace`, one dict the runner passes to all its
    steps, holds buffers a backend reuses across steps. What a backend derives from the spans
    for all layers of a step lives in the step's plan (AttentionMetadata.plan), not here."""
    table_rows: torch.Tensor
    starts: torch.Tensor
    lens: torch.Tensor
    max_len: int
    group_rows: torch.Tensor | None = None
    workspace: dict = field(default_factory=dict)

"""Host-to-device copies of a step's small lists, without making the host wait for the GPU.

`torch.tensor(values, device="cuda")` copies from pageable memory, which blocks the host until
the copy is done (behind all queued GPU work): a sync. Here the values go through pinned memory
with a non-blocking copy instead, all lists of a call in one copy. Each list starts at a 16-byte
boundary of the buffer, so Triton, which specializes kernels on pointer alignment, sees the
same alignment every step (and compiles no new variants for it).
"""
from __future__ import annotations

import torch

_ALIGN = 16


def upload(device: torch.device, *lists, dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, ...]:
    """The lists as tensors of `dtype` on `device`: one copy, then views."""
    per = max(1, _ALIGN // torch.empty((), dtype=dtype).element_size())
    flat, sizes = [], []
    for xs in lists:
        pad = -len(xs) % per
        flat += xs
        flat += [0] * pad
        sizes += [len(xs), pad]
    host = torch.tensor(flat, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory().to(device, non_blocking=True)
    return host.split(sizes)[::2]


def upload_one(device: torch.device, values, dtype: torch.dtype = torch.long) -> torch.Tensor:
    return upload(device, list(values), dtype=dtype)[0]

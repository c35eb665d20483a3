"""Kernel backends: "torch" (the references in kernels/, the CPU path) or "triton" (kernels/*_triton.py,
the CUDA path; on a CPU it runs under TRITON_INTERPRET=1, slowly, for tests). Each backend is a
pair of modules with identical function signatures: attention ops and per-token ops."""
from __future__ import annotations

from types import ModuleType

import torch

from tts_engine.kernels import attention_ref, elementwise_ref

BACKENDS = ("torch", "triton")


def resolve_backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention_backend {name!r}; use 'auto', 'torch' or 'triton'")
    return name


def get_backend(name: str) -> tuple[ModuleType, ModuleType]:
    if name == "torch":
        return attention_ref, elementwise_ref
    if name == "triton":
        # imported only when asked for: triton must see TRITON_INTERPRET before these load
        from tts_engine.kernels import attention_triton, elementwise_triton
        return attention_triton, elementwise_triton
    raise ValueError(f"unknown attention_backend {name!r}; use 'auto', 'torch' or 'triton'")

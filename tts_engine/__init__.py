"""tts-engine: a small, fast inference engine for test-time scaling research.

The public names load on first use (PEP 562), so importing a low layer (say a kernel module,
`tts_engine.kernels.attention_ref`) does not pull in the engine, the tokenizer, jinja2 or tqdm.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "LLM": "tts_engine.llm",
    "PRM": "tts_engine.prm",
    "SamplingParams": "tts_engine.sampling_params",
    "RequestOutput": "tts_engine.outputs",
    "CompletionOutput": "tts_engine.outputs",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tts_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

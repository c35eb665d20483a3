"""tts-engine: a small, fast inference engine for test-time scaling research.

The public names load on first use (PEP 562), so importing a low layer (say a kernel module,
`tts_engine.kernels.attention_ref`) does not pull in the engine, the tokenizer, jinja2 or tqdm.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

_EXPORTS = {
    "LLM": "tts_engine.llm",
    "PRM": "tts_engine.prm",
    "SamplingParams": "tts_engine.sampling_params",
    "RequestOutput": "tts_engine.outputs",
    "CompletionOutput": "tts_engine.outputs",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def _kernels_from_source_tree() -> None:
    """The kernels live in the repo's top-level kernels/ folder, which has no __init__.py on
    purpose: from the repo root (where `python -m` puts the current folder first on sys.path) a
    regular package there would hide the PyPI package `kernels`, which transformers imports. A wheel
    installs the folder as tts_engine/kernels and needs nothing here. Run from the source tree (an
    editable install, whose finder maps only regular packages, or PYTHONPATH=.), the folder is
    registered here as the namespace package tts_engine.kernels."""
    name = __name__ + ".kernels"
    here = Path(__file__).resolve().parent
    folder = here.parent / "kernels"
    if name in sys.modules or (here / "kernels").is_dir() or not (folder / "spans.py").is_file():
        return
    spec = ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    globals()["kernels"] = module      # as the import system sets a submodule on its parent


_kernels_from_source_tree()


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tts_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""The import order holds: CLI > search > API > engine > models > kernels > config (ARCHITECTURE.md).
No module imports one above it, kernel modules load without the engine, the tokenizer, jinja2 or
tqdm, and lines stay within 110 characters."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# package prefix -> layer (higher imports lower); the first matching prefix wins
LAYERS = [
    ("tts_engine.generate", 6), ("tts_engine.run", 6), ("tts_engine.report", 6), ("tts_engine.toy.train", 6),
    ("tts_engine.replica", 6), ("tts_engine.ray_replicas", 6), ("tts_engine.study", 6),
    ("tts_engine.search", 5), ("tts_engine.tasks", 5), ("tts_engine.toy", 5),
    ("tts_engine.llm", 4), ("tts_engine.prm", 4), ("tts_engine.outputs", 4),
    ("tts_engine.engine", 3),
    ("tts_engine.models", 2),
    ("tts_engine.kernels", 1),
    ("tts_engine._C", 0), ("tts_engine.config", 0), ("tts_engine.loader", 0), ("tts_engine.tokenizer", 0),
    ("tts_engine.flops", 0), ("tts_engine.sampling_params", 0), ("tts_engine.work", 0),
    ("tts_engine.text", 0),
]


def layer(module: str) -> int:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} has no layer: add it to LAYERS and ARCHITECTURE.md")


def modules():
    for folder, package in (("tts_engine", "tts_engine"), ("kernels", "tts_engine.kernels")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py") and f != "__init__.py":
                    rel = os.path.relpath(os.path.join(dirpath, f[:-3]), os.path.join(ROOT, folder))
                    yield package + "." + rel.replace(os.sep, "."), os.path.join(dirpath, f)


def imported(path: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}   # `from pkg import module`
    return {n for n in names if n.startswith("tts_engine.")}


def test_no_module_imports_a_higher_layer():
    bad = []
    for module, path in modules():
        for name in imported(path):
            if any(name == p or name.startswith(p + ".") for p, _ in LAYERS) and layer(name) > layer(module):
                bad.append(f"{module} (layer {layer(module)}) imports {name} (layer {layer(name)})")
    assert not bad, "\n".join(bad)


def test_search_never_reaches_into_what_it_drives():
    """A strategy calls only what search/contract.py names (Policy, Scorer): no `.engine` (nor any
    private attribute) of the policy or the scorer."""
    bad = []
    for module, path in modules():
        if not module.startswith("tts_engine.search."):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Attribute) and node.attr == "engine":
                bad.append(f"{module}:{node.lineno} reads .engine")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr in ("policy", "scorer") and node.attr.startswith("_")):
                bad.append(f"{module}:{node.lineno} reads {node.value.attr}.{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("kernel", ["spans", "attention_ref", "elementwise_ref", "attention_triton",
                                    "elementwise_triton"])
def test_kernel_modules_import_nothing_above_them(kernel):
    # (torch itself imports tqdm, through torch.hub: count only what the kernel module adds)
    code = (
        "import sys, torch, triton\n"
        "before = set(sys.modules)\n"
        f"import tts_engine.kernels.{kernel}\n"
        "added = set(sys.modules) - before\n"
        "heavy = [m for m in ('tts_engine.engine', 'tts_engine.models', 'tts_engine.tokenizer',"
        " 'jinja2', 'tqdm') if m in added]\n"
        "assert not heavy, heavy"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


def test_public_names_still_import():
    from tts_engine import LLM, CompletionOutput, RequestOutput, SamplingParams   # noqa: F401
    import tts_engine
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        tts_engine.Nope   # noqa: B018


def test_lines_are_at_most_110_characters():
    long = []
    for folder in ("tts_engine", "kernels", "tests", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    for i, line in enumerate(open(path), 1):
                        if len(line.rstrip("\n")) > 110:
                            long.append(f"{os.path.relpath(path, ROOT)}:{i} ({len(line.rstrip())})")
    assert not long, "\n".join(long)

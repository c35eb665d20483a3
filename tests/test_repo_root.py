"""Nothing at the repo root hides an installed package. `python -m ...` and `python -c ...` put the
current folder first on sys.path, so a top-level package or module of the repo named like an
installed one wins over it: kernels/ once hid Hugging Face's `kernels`, which transformers imports."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_from_root(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)


def test_import_kernels_from_the_repo_root_is_hugging_faces_package():
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's `kernels` is not installed (transformers no longer pulls it in)")
    init = os.path.realpath(dist.locate_file("kernels/__init__.py"))
    code = (
        "import os, sys, kernels\n"
        f"assert sys.path[0] in ('', {ROOT!r}), sys.path[:2]\n"     # the repo root does come first
        f"assert os.path.realpath(kernels.__file__ or '') == {init!r}, (kernels.__file__, kernels.__path__)\n"
        "import torch\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
        "                  num_attention_heads=2, num_key_value_heads=1)\n"
        "model = LlamaForCausalLM(cfg)\n"
        "print(tuple(model(torch.tensor([[1, 2, 3]])).logits.shape))\n"
        # ...and the project's own kernels still import, beside Hugging Face's, in one process
        "import tts_engine.kernels.attention_ref as ref, tts_engine.kernels.attention_triton\n"
        "print(ref.__name__)\n"
    )
    res = run_from_root(code)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["(1,", "3,", "64)", "tts_engine.kernels.attention_ref"]


def test_the_kernels_folder_is_only_a_namespace_portion():
    # a folder without __init__.py is outranked by any installed regular package of its name
    assert os.path.isdir(os.path.join(ROOT, "kernels"))
    assert not os.path.exists(os.path.join(ROOT, "kernels", "__init__.py"))


def importable_at_root() -> dict[str, str]:
    """Top-level names that the repo root itself provides as a module or a regular package."""
    names = {}
    for entry in os.listdir(ROOT):
        path = os.path.join(ROOT, entry)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "__init__.py")):
            names[entry] = entry + "/"
        elif os.path.isfile(path) and entry.endswith((".py", ".so", ".pyd")):
            names[entry.split(".")[0]] = entry
    return {n: where for n, where in names.items() if n.isidentifier()}


def test_no_top_level_name_of_the_repo_collides_with_an_installed_distribution():
    installed = importlib.metadata.packages_distributions()
    ours = {"tts-engine", "tts_engine"}
    clashes = [f"{where} hides the top-level `{name}` of {installed[name]}"
               for name, where in sorted(importable_at_root().items())
               if name in installed and not set(installed[name]) <= ours]
    assert not clashes, "\n".join(clashes)
    assert "tts_engine" in importable_at_root()      # the scan does see the repo's own package


def test_every_package_of_the_tree_is_installed():
    """An editable install finds any folder; a wheel holds only what pyproject.toml lists."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {"tts_engine.kernels"}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tts_engine")):
        if "__init__.py" in files:
            found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    assert found == listed, f"not listed: {sorted(found - listed)}; absent: {sorted(listed - found)}"

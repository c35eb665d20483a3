"""The README's commands and code are what a new user runs: the Python API block executes as it
stands, and the test command CI runs is the README's."""
from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_python_api_block_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no python block"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "first token" in out and "torch.Size([1, 576])" in out


def test_ci_runs_the_readme_test_command():
    command = re.search(r"```bash\n(python -m pytest[^\n]*)\n```", README).group(1)
    assert command in open(os.path.join(ROOT, ".ci", "run")).read()

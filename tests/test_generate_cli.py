"""The `python -m tts_engine.generate` command: output on stdout, a summary on stderr, and exit
code 2 with a one-line error for bad input."""
from __future__ import annotations

import subprocess
import sys

from tts_engine.generate import main

BASE = ["--dtype", "float32", "--device", "cpu", "--max-tokens", "6"]


def test_generates_greedily_and_samples(tiny_llama, capsys):
    assert main(["--model", tiny_llama, "--prompt", "Step 1:", *BASE]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "6 tokens" in err and "[loaded in" in err
    assert (
        main(
            [
                "--model", tiny_llama, "--chat", "What is 2 + 3?", "--n", "2", "--temperature", "1", "--seed",
                "4", *BASE]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "--- sample 0 (length)" in out and "--- sample 1 (length)" in out and "12 tokens" in err


def test_bad_input_exits_2_with_a_message(tiny_llama, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--prompt", "x", *BASE]) == 2
    assert "error: model path" in capsys.readouterr().err
    assert main(["--model", tiny_llama, "--prompt", "x", "--temperature", "-1", *BASE]) == 2
    assert "error: temperature must be a finite number >= 0" in capsys.readouterr().err


def test_runs_as_a_module(tiny_llama):
    res = subprocess.run(
        [sys.executable, "-m", "tts_engine.generate", "--model", tiny_llama, "--prompt", "The", *BASE],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip()

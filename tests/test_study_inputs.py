"""Every bad input of the study CLI exits 2 with one line naming the option and the value, before any
model is built or any result is written. Each case runs the CLI in a subprocess in which building a
model raises, so a check that came after loading would show up as that error instead."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from test_run import ROOT, args, study_inputs  # noqa: F401 (a fixture)

NO_MODELS = (
    "import sys\n"
    "import tts_engine.models.model as m\n"
    "def refuse(*a, **k):\n"
    "    raise SystemExit('a model was built before the inputs were checked')\n"
    "m.Model.__init__ = refuse\n"
    "from tts_engine.run import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def cli(argv: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_MODELS, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def replace_option(argv: list[str], flag: str, *values: str) -> list[str]:
    """argv with flag's values replaced (or the flag added)."""
    argv = list(argv)
    if flag in argv:
        i = argv.index(flag) + 1
        j = i
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        argv[i:j] = values
    else:
        argv += [flag, *values]
    return argv


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty_model").mkdir()
    (d / "notes.txt").write_text("not a model\n")
    (d / "number.jsonl").write_text("7\n")
    (d / "null.jsonl").write_text(json.dumps({"id": "a", "problem": "1 + 1?", "answer": None}) + "\n")
    (d / "a_folder.jsonl").mkdir()
    (d / "taken").write_text("a file where the output folder should go\n")
    return d


@pytest.fixture(scope="module")
def broken_policies(study_inputs, tmp_path_factory):
    """The test policy without its tokenizer.json, without its chat template, and with a training.json
    whose count is not a number or that is not JSON."""
    import shutil
    _, policy, _ = study_inputs
    d = tmp_path_factory.mktemp("broken")
    shutil.copytree(policy, d / "no_tokenizer")
    (d / "no_tokenizer" / "tokenizer.json").unlink()
    shutil.copytree(policy, d / "no_template")
    config = json.loads((d / "no_template" / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (d / "no_template" / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in (d / "no_template").glob("chat_template.jinja"):
        extra.unlink()
    shutil.copytree(policy, d / "text_tokens")
    (d / "text_tokens" / "training.json").write_text(json.dumps({"training_tokens": "6.3M"}))
    shutil.copytree(policy, d / "torn_json")
    (d / "torn_json" / "training.json").write_text('{"training_tokens": 63')
    return d


CASES = [
    # (what, the option and its values ({d}: the bad files' folder), the message)
    ("an empty folder as --policy", ["--policy", "{d}/empty_model"],
     "--policy '{d}/empty_model': no config.json (nor a .gguf file) in model folder"),
    ("a non-model file as --prm", ["--prm", "{d}/notes.txt"],
     "--prm '{d}/notes.txt': '{d}/notes.txt' is a file but not a .gguf file"),
    ("a policy passed as --prm", ["--prm", "{policy}"], "--prm '{policy}': cannot tell which PRM family"),
    ("a PRM passed as --policy", ["--policy", "{prm}"],
     "--policy '{prm}' is not a policy: Qwen2ForPrmModel has no language-model head"),
    ("a missing second --policy", ["--policy", "{policy}", "/no/model"],
     "--policy '/no/model': model '/no/model' does not exist"),
    ("--beam-width 0", ["--beam-width", "0"], "--beam-width must be >= 1, got 0"),
    ("--temperature -1", ["--temperature", "-1"],
     "--temperature must be a finite number >= 0 (0: greedy), got -1.0"),
    ("--top-p 0", ["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    ("--device tpu", ["--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    ("--prm-kind foo", ["--prm-kind", "foo"], "argument --prm-kind: invalid choice: 'foo'"),
    ("--n 1000000000", ["--n", "1000000000"], "--n must be between 1 and 4096, got 1000000000"),
    ("--difficulty-samples -1", ["--difficulty-samples", "-1"],
     "--difficulty-samples must be between 0 and 4096, got -1"),
    ("memory shares above the GPU", ["--prm-memory", "0.7"],
     "--policy-memory 0.45 and --prm-memory 0.7 share one GPU: their sum must be at most 1"),
    ("--out naming an existing file", ["--out", "{d}/taken"], "--out '{d}/taken' is a file, not a folder"),
    ("--out below a file", ["--out", "{d}/taken/sub"],
     "--out '{d}/taken/sub' is not writable (Not a directory)"),
    ("a dataset row that is a bare number", ["--dataset", "{d}/number.jsonl"],
     "--dataset: {d}/number.jsonl: row 1 is a JSON int, not an object"),
    ("a null answer", ["--dataset", "{d}/null.jsonl"],
     "--dataset: {d}/null.jsonl: row 1 has a null 'answer'"),
    ("a dataset path that is a folder", ["--dataset", "{d}/a_folder.jsonl"],
     "--dataset: dataset '{d}/a_folder.jsonl' is a folder, not a JSONL file"),
    ("a misspelled model in --pretrain-tokens", ["--pretrain-tokens", "tiny=1e9"],
     "--pretrain-tokens 'tiny=1e9': 'tiny' is none of this study's models"),
    ("a bad --pretrain-tokens value", ["--pretrain-tokens", "{policy_name}=lots"],
     "--pretrain-tokens '{policy_name}=lots': 'lots' is not a positive token count"),
    ("--pretrain-tokens without a value", ["--pretrain-tokens", "{policy_name}"],
     "--pretrain-tokens '{policy_name}': expected MODEL=TOKENS"),
]


CASES += [
    ("a policy without its tokenizer", ["--policy", "{b}/no_tokenizer"],
     "--policy '{b}/no_tokenizer': no tokenizer.json in"),
    ("a prompt style the policy's tokenizer cannot write",
     ["--policy", "{b}/no_template", "--prompt-style", "qwen"],
     "--policy '{b}/no_template' has no chat template, which --prompt-style qwen needs"),
    ("a training.json count that is text", ["--policy", "{b}/text_tokens"],
     "{b}/text_tokens/training.json: training_tokens '6.3M' is not a positive token count"),
    ("a training.json that is not JSON", ["--policy", "{b}/torn_json"],
     "{b}/torn_json/training.json: not a JSON object with training_tokens"),
    ("a --ray-address without a port", ["--ray-address", "headnode"],
     "--ray-address must be auto or HOST:PORT (or ray://HOST:PORT), got 'headnode'"),
    ("compute-optimal without difficulty samples",
     ["--method", "compute-optimal", "--difficulty-samples", "0"],
     "--method compute-optimal picks by difficulty bin: it needs --difficulty-samples >= 1, got 0"),
]


@pytest.mark.parametrize("what,change,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_before_any_model_loads(study_inputs, bad_files, broken_policies, tmp_path, what,
                                                  change, message):
    data, policy, prm = study_inputs
    out = tmp_path / "out"
    names = dict(d=bad_files, b=broken_policies, policy=policy, prm=prm, policy_name=os.path.basename(policy))
    argv = args(data, policy, prm, out, "--method", "bon", "beam")
    change = [v.format(**names) for v in change]
    while change:                       # (flag, values...) pairs, values up to the next flag
        flag, values = change[0], []
        change = change[1:]
        while change and not change[0].startswith("--"):
            values.append(change.pop(0))
        argv = replace_option(argv, flag, *values)
    res = cli(argv)
    expected = message.format(**names)
    assert res.returncode == 2, (what, res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert expected in lines[-1], (what, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    assert not (out / "results.jsonl").exists() and not (out / "manifest.json").exists()


def test_a_read_only_out_folder_is_refused(study_inputs, tmp_path):
    data, policy, prm = study_inputs
    if os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
        pytest.skip("no read-only folder here")
    res = cli(args(data, policy, prm, "/sys", "--method", "bon"))
    assert res.returncode == 2 and "--out '/sys' is not writable" in res.stderr, res.stderr[-2000:]


def test_help_is_the_docstring_with_every_default():
    """--help prints the command's docstring as written and each option's default: the parser's own,
    or, where the study fills it in after parsing, the values it fills in (the toy study's apart)."""
    from tts_engine import run
    from tts_engine.study.args import parse_args, parser
    # (wide: argparse wraps help at hyphens too, "Qwen-Math" into "Qwen-" and "Math")
    res = subprocess.run([sys.executable, "-m", "tts_engine.run", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "1000"})
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert " ".join(run.__doc__.split()) in text
    shown = [a for a in parser("")._actions if a.default not in (None, [], argparse.SUPPRESS)]
    assert shown                # (the loop below checks something)
    for action in shown:
        assert f"{' '.join(action.help.split())} (default: {action.default})" in text, action.dest
    study, toy = parse_args(["--policy", "P", "--dataset", "D"]), parse_args([])
    for name in ("max_steps", "step_tokens", "max_tokens"):
        assert f"(default: {getattr(study, name)}; toy: {getattr(toy, name)})" in text, name
    added = [m for m in toy.method if m not in study.method]
    assert f"default: {' '.join(study.method)} (the toy study adds {' '.join(added)})" in text
    # the values a user sees, pinned here (a changed default must change this test too)
    for default in ("(default: tts_study)", "budgets N (at most 4096) (default: [4, 16, 64])",
                    "seed of every sample (default: 0)", "(default: 0.7)", "(default: 1.0)", "(default: 4)",
                    "(default: 16)", "(default: auto)", "(default: cuda when available)", "(default: all)"):
        assert default in text, default

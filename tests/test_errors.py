"""Bad input gets a clear error naming the problem."""
from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch

from tts_engine import LLM, SamplingParams


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, "n must be"),
    ({"temperature": -0.1}, "temperature must be"),
    ({"top_p": 0.0}, "top_p must be"),
    ({"top_p": 1.5}, "top_p must be"),
    ({"top_k": -2}, "top_k must be"),
    ({"max_tokens": 0}, "max_tokens must be"),
    ({"stop": [""]}, "stop strings"),
    ({"logprobs": -1}, "logprobs must be"),
])
def test_invalid_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=600)


def test_prompt_longer_than_context(llm):
    with pytest.raises(ValueError, match="prompt has 512 tokens but the model's context is 512"):
        llm.generate({"prompt_token_ids": [5] * 512})


def test_token_outside_vocabulary(llm):
    with pytest.raises(ValueError, match="prompt token id 384 is outside the vocabulary"):
        llm.generate({"prompt_token_ids": [5, 384]})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate({"prompt_token_ids": [-1]})


def test_empty_prompt_and_bad_prompt_type(llm):
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate({"prompt_token_ids": []})
    with pytest.raises(ValueError, match="a prompt must be"):
        llm.generate([42])


def test_sequence_larger_than_kv_budget(tiny_llama):
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=200)
    with pytest.raises(ValueError, match="needs up to 250 KV slots .* kv_cache_tokens=200"):
        llm.generate({"prompt_token_ids": [5] * 150}, SamplingParams(max_tokens=100))
    # The engine is still usable afterwards.
    assert llm.generate({"prompt_token_ids": [5, 6]}, SamplingParams(max_tokens=3))[0].outputs[0].token_ids


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LLM(str(tmp_path))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unsupported_config(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="unsupported architecture"):
        LLM(str(folder))
    cfg.pop("rope_parameters", None)
    (folder / "config.json").write_text(
        json.dumps({**cfg, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    )
    with pytest.raises(ValueError, match="unsupported rope_type 'yarn'"):
        LLM(str(folder))
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported dtype"):
        LLM(str(folder), dtype="int8")


def test_missing_files_and_bad_tensors(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        LLM(str(folder))
    folder = _copy(tiny_llama, tmp_path / "m2")
    weights = safetensors.torch.load_file(str(folder / "model.safetensors"))
    w = dict(weights)
    del w["model.layers.1.mlp.up_proj.weight"]
    safetensors.torch.save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="checkpoint lacks"):
        LLM(str(folder))
    w = dict(weights)
    w["model.layers.0.self_attn.k_proj.weight"] = w["model.layers.0.self_attn.k_proj.weight"][:8]
    safetensors.torch.save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="shape mismatch for 'model.layers.0.self_attn.k_proj.weight'"):
        LLM(str(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        LLM(str(folder))


def test_bad_device_backend_and_package(tiny_llama):
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            LLM(tiny_llama, device="cuda")
    with pytest.raises(ValueError, match="unknown attention_backend 'flash'"):
        LLM(tiny_llama, device="cpu", attention_backend="flash")
    with pytest.raises(FileNotFoundError, match="no installed Python package 'no_such_pkg_xyz'"):
        LLM("pkg:no_such_pkg_xyz")


def test_interrupted_generate_leaves_engine_consistent(tiny_llama):
    """A KeyboardInterrupt in the middle of a step must not leave half-written K/V in the cache."""
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048)
    prompts = [{"prompt_token_ids": [5, 9, 44, 100 + i, 7]} for i in range(4)]
    sp = SamplingParams(n=2, temperature=0, max_tokens=12, ignore_eos=True)
    expected = [[o.token_ids for o in r.outputs] for r in
                LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048).generate(prompts, sp)]
    real_run, calls = llm.engine.runner.run, []

    def flaky(batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(batch)

    llm.engine.runner.run = flaky
    with pytest.raises(KeyboardInterrupt):
        llm.generate(prompts, sp)
    llm.engine.runner.run = real_run
    assert llm.stats()["kv_tokens_in_use"] == 0 and not llm.engine.scheduler.has_work()
    assert [[o.token_ids for o in r.outputs] for r in llm.generate(prompts, sp)] == expected


def test_encode_rejects_bad_positions_without_queueing_anything(llm):
    with pytest.raises(ValueError, match="positions must be"):
        llm.encode([[5, 6, 7], [8, 9]], positions=[[0, 2], [5]])
    assert not llm.engine.scheduler.has_work()


def test_cuda_device_selection(monkeypatch, tmp_path):
    """On a (pretend, single-GPU) CUDA machine "cuda" means the current GPU and becomes current for
    Triton and CUDA graphs; a GPU index that is not there is refused by name."""
    import torch
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    with pytest.raises(FileNotFoundError):      # gets past device selection to the (missing) model
        LLM(str(tmp_path / "missing"), device="cuda")
    assert chosen == [torch.device("cuda", 0)]
    with pytest.raises(ValueError, match="cuda:3.*only 1 GPU"):
        LLM(str(tmp_path / "missing"), device="cuda:3")

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


@pytest.mark.parametrize("overlap", [False, True])
def test_interrupted_generate_leaves_engine_consistent(tiny_llama, overlap):
    """A KeyboardInterrupt in the middle of a step must not leave half-written K/V in the cache
    (overlapped, it is raised on the device's worker thread while the host prepares the next)."""
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048, overlap=overlap)
    prompts = [{"prompt_token_ids": [5, 9, 44, 100 + i, 7]} for i in range(4)]
    sp = SamplingParams(n=2, temperature=0, max_tokens=12, ignore_eos=True)
    expected = [[o.token_ids for o in r.outputs] for r in
                LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048).generate(prompts, sp)]
    real_run, calls = llm.engine.runner.execute, []

    def flaky(prepared):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(prepared)

    llm.engine.runner.execute = flaky
    with pytest.raises(KeyboardInterrupt):
        llm.generate(prompts, sp)
    llm.engine.runner.execute = real_run
    assert llm.stats()["kv_tokens_in_use"] == 0 and not llm.engine.scheduler.has_work()
    assert [[o.token_ids for o in r.outputs] for r in llm.generate(prompts, sp)] == expected


def test_encode_rejects_bad_positions_without_queueing_anything(llm):
    with pytest.raises(ValueError, match="positions must be"):
        llm.encode([[5, 6, 7], [8, 9]], positions=[[0, 2], [5]])
    with pytest.raises(ValueError, match="1 position lists for 2 prompts"):
        llm.encode([[5, 6, 7], [8, 9]], positions=[[0, 2]])
    with pytest.raises(ValueError, match="1 prefixes for 2 prompts"):
        llm.engine.encode([[5, 6, 7], [8, 9]], [[0], [1]], after=[None])
    with pytest.raises(ValueError, match="positions must be a non-empty list of integers"):
        llm.encode([[5, 6, 7]], positions=[[True]])
    with pytest.raises(ValueError, match="after must hold"):
        llm.engine.encode([[5, 6, 7]], [[0]], after=[[5, 6]])
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


# ---------------------------------------------------------------- vLLM-style inputs probed by users

@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": float("inf")}, "temperature must be a finite number"),
    ({"top_p": float("nan")}, "top_p must be"),
    ({"n": True}, "n must be an integer"),
    ({"max_tokens": True}, "max_tokens must be an integer"),
    ({"seed": 2 ** 64}, "seed must fit in 64 bits"),
    ({"seed": -(2 ** 63) - 1}, "seed must be an integer >= "),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"min_tokens": 20, "max_tokens": 10}, "min_tokens=20 is larger than max_tokens=10"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be"),
    ({"presence_penalty": 3.0}, "presence_penalty must be"),
    ({"min_p": 1.5}, "min_p must be"),
    ({"stop": ["\ud800x"]}, "stop string is not valid Unicode"),
    ({"stop": ["x"], "detokenize": False}, "stop strings need detokenize=True"),
    ({"stop_token_ids": [1.5]}, "stop_token_ids must be integers"),
    ({"logit_bias": {3: 1.0}}, r"SamplingParams\(logit_bias=\{3: 1.0\}\) is not supported"),
    ({"guided_decoding": object()}, "guided_decoding"),
    ({"tempreature": 0.5}, "unknown parameter.*tempreature"),
])
def test_invalid_vllm_sampling_params_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_vllm_off_values_are_accepted():
    p = SamplingParams(best_of=None, logit_bias=None, bad_words=None, truncate_prompt_tokens=None, top_k=-1)
    assert p.top_k == 0 and SamplingParams(n=3, best_of=3).n == 3


def test_inputs_checked_against_the_model(llm):
    with pytest.raises(ValueError, match="logprobs=500 is larger than the vocabulary"):
        llm.generate("hi", SamplingParams(logprobs=500))
    with pytest.raises(ValueError, match="prompt_logprobs=500 is larger than the vocabulary"):
        llm.generate("hi", SamplingParams(prompt_logprobs=500))
    with pytest.raises(ValueError, match="stop_token_ids: 999 is outside the vocabulary"):
        llm.generate("hi", SamplingParams(stop_token_ids=[3, 999]))
    with pytest.raises(ValueError, match="a prompt must be a string .* got NoneType"):
        llm.generate([None])
    with pytest.raises(ValueError, match="prompts must be a string, a prompt dict or a list .* got bytes"):
        llm.generate(b"hello")
    with pytest.raises(ValueError, match="a prompt must be a string .* got bytes"):
        llm.generate([b"hello"])
    with pytest.raises(ValueError, match="prompt is not valid Unicode: surrogates not allowed"):
        llm.generate("bad \udc80 text")
    with pytest.raises(ValueError, match="prompt_token_ids must be integers, got 1.5"):
        llm.generate({"prompt_token_ids": [3, 1.5]})
    with pytest.raises(ValueError, match="prompt fields multi_modal_data are not supported"):
        llm.generate({"prompt": "hi", "multi_modal_data": {}})
    assert not llm.engine.scheduler.has_work()


def test_numpy_and_torch_token_ids_are_accepted(llm):
    import numpy as np
    import torch
    ids = [5, 6, 7, 8]
    sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    expected = llm.generate({"prompt_token_ids": ids}, sp)[0].outputs[0].token_ids
    forms = (np.array(ids), [np.int64(i) for i in ids], torch.tensor(ids), [torch.tensor(i) for i in ids])
    for form in forms:
        assert llm.generate({"prompt_token_ids": form}, sp)[0].outputs[0].token_ids == expected


def test_llm_arguments(tiny_llama):
    with pytest.raises(ValueError, match="max_model_len must be an integer >= 1, got 0"):
        LLM(tiny_llama, device="cpu", max_model_len=0)
    with pytest.raises(ValueError, match="tensor_parallel_size=2"):
        LLM(tiny_llama, device="cpu", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="unknown argument 'max_lora_rank'"):
        LLM(tiny_llama, device="cpu", max_lora_rank=8)
    with pytest.raises(ValueError, match=r"LLM\(quantization='awq'\) is not supported"):
        LLM(tiny_llama, device="cpu", quantization="awq")
    # accepted vLLM arguments that change nothing here
    LLM(tiny_llama, device="cpu", kv_cache_tokens=256, swap_space=4, disable_log_stats=True,
        quantization=None,
        trust_remote_code=True)


# ---------------------------------------------------------------- broken files

def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header only"])
def test_broken_safetensors_are_named(tiny_llama, tmp_path, damage):
    folder = _copy(tiny_llama, tmp_path / "m")
    file = folder / "model.safetensors"
    data = file.read_bytes()
    damaged = {"truncated": data[:len(data) // 2], "garbage": bytes(reversed(data)), "header only": data[:9]}
    _write(file, damaged[damage])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        LLM(str(folder), device="cpu")


def test_non_finite_weights_are_named(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path / "m")
    weights = safetensors.torch.load_file(str(folder / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    safetensors.torch.save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="'model.layers.1.mlp.down_proj.weight' holds NaN or infinite"):
        LLM(str(folder), device="cpu")
    LLM(str(folder), device="cpu", kv_cache_tokens=256, check_weights=False)   # on request, it loads


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_malformed_json_is_named(tiny_llama, tmp_path, name):
    folder = _copy(tiny_llama, tmp_path / "m")
    text = (folder / name).read_text()
    (folder / name).write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match=f"{name}: "):
        LLM(str(folder), device="cpu")


def test_config_without_architectures(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["architectures"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json has no 'architectures' list, .*model_type 'llama'"):
        LLM(str(folder), device="cpu")


def test_broken_gguf_is_named(smollm2_gguf, tmp_path):
    data = open(smollm2_gguf, "rb").read(1 << 20)      # the first MiB of a 100 MB file
    path = _write(tmp_path / "cut.gguf", data)
    with pytest.raises(ValueError, match="cut.gguf: not a readable GGUF file"):
        LLM(str(path), device="cpu")

"""The model registry and heads: an architecture is one registry entry; a value head and a
classification head load from the checkpoint's own tensor names (v_head.summary, score.0/score.2)
on a backbone without lm_head, and compute what the same weights compute in transformers."""
from __future__ import annotations

import json
import random

import pytest
import safetensors.torch
import torch
import transformers

from conftest import save_tiny_model
from tts_engine import LLM
from tts_engine.config import ArchFlags, EngineConfig
from tts_engine.engine.engine import Engine
from tts_engine.models import registry
from tts_engine.models.decoder import Decoder
from tts_engine.models.heads import ClassificationHead, ValueHead
from tts_engine.sampling_params import SamplingParams

HEAD_TENSORS = {
    "value": lambda h: {"v_head.summary.weight": torch.randn(1, h), "v_head.summary.bias": torch.randn(1)},
    "classification": lambda h: {
        "score.0.weight": torch.randn(h, h) / h**0.5,
        "score.0.bias": torch.randn(h),
        "score.2.weight": torch.randn(2, h),
        "score.2.bias": torch.randn(2),
    },
}


def reward_checkpoint(folder, kind: str, arch: str, strip_prefix: bool = False):
    """A tiny Qwen2 backbone saved as a reward model: config architectures = arch, no lm_head,
    the head's tensors under its own names. Returns (transformers backbone, head tensors)."""
    hf = save_tiny_model(str(folder), "qwen2", seed=random.randrange(1000))
    weights = safetensors.torch.load_file(str(folder / "model.safetensors"))
    del weights["lm_head.weight"]
    if strip_prefix:        # saved by AutoModel: "layers.0...." instead of "model.layers.0...."
        weights = {k.removeprefix("model."): v for k, v in weights.items()}
    head = HEAD_TENSORS[kind](hf.config.hidden_size)
    safetensors.torch.save_file({**weights, **head}, str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": [arch], "num_labels": 2}))
    return hf.model.eval(), head


def hidden_at(engine: Engine, ids: list[int], positions: list[int]) -> torch.Tensor:
    request = engine.make_request(
        ids, SamplingParams(max_tokens=1), hidden_positions=positions, generates=False
    )
    engine.add(request)
    engine.run()
    return torch.stack([request.seqs[0].hidden_states[p] for p in positions])


@pytest.mark.parametrize("kind,head,strip", [
    ("value", ValueHead, False), ("classification", ClassificationHead, False), ("value", ValueHead, True)])
def test_reward_heads_load_by_their_tensor_names(tmp_path, monkeypatch, kind, head, strip):
    arch = f"Qwen2ForTiny{kind.title()}Model"
    monkeypatch.setitem(
        registry.ARCHITECTURES, arch, registry.ModelSpec(Decoder, head, ArchFlags(qkv_bias=True))
    )
    backbone, tensors = reward_checkpoint(tmp_path, kind, arch, strip_prefix=strip)
    engine = Engine(EngineConfig(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=1024))
    assert engine.model.head_name == head.name and not engine.can_generate
    ids = [random.randrange(4, 384) for _ in range(20)]
    positions = [3, 11, 19]
    ours = engine.model.compute_logits(hidden_at(engine, ids, positions))
    with torch.no_grad():
        h = backbone(torch.tensor([ids])).last_hidden_state[0, positions]
    if kind == "value":
        expected = h @ tensors["v_head.summary.weight"].T + tensors["v_head.summary.bias"]
    else:
        mid = torch.relu(h @ tensors["score.0.weight"].T + tensors["score.0.bias"])
        expected = mid @ tensors["score.2.weight"].T + tensors["score.2.bias"]
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="cannot generate"):
        LLM(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=1024)


def test_missing_head_tensor_is_named(tmp_path, monkeypatch):
    arch = "Qwen2ForTinyValueModel"
    monkeypatch.setitem(
        registry.ARCHITECTURES, arch, registry.ModelSpec(Decoder, ValueHead, ArchFlags(qkv_bias=True))
    )
    reward_checkpoint(tmp_path, "value", arch)
    weights = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    del weights["v_head.summary.bias"]
    safetensors.torch.save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="v_head.summary.bias"):
        Engine(EngineConfig(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=1024))


def test_lm_head_only_columns(tiny_llama):
    """A PRM that reads two tokens' logits computes only those columns of the LM head."""
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=1024)
    hidden = llm.encode([[5, 6, 7, 8]])[0]
    full = llm.engine.model.compute_logits(hidden)
    cols = torch.tensor([17, 3])
    assert torch.allclose(llm.engine.model.compute_logits(hidden, columns=cols), full[:, cols], atol=1e-5)


def test_unknown_architecture_lists_the_registry():
    with pytest.raises(ValueError, match=r"unsupported architecture \[.GPT2LMHeadModel.\]; supported: Llama"):
        registry.resolve({"architectures": ["GPT2LMHeadModel"]})
    assert registry.resolve({"architectures": ["Foo", "MistralForCausalLM"]})[0] == "MistralForCausalLM"

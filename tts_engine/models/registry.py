"""Which model class and head serve each `architectures` name of a config.json.

Adding an architecture is one entry in ARCHITECTURES: its decoder class, its head (tensor names
included, see heads.py) and the flags its config.json leaves implicit. A reward model built on a
known backbone is an entry with another head (see the process reward models below).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tts_engine.config import ArchFlags, ModelConfig
from tts_engine.models.decoder import Decoder
from tts_engine.models.heads import HEADS, ClassificationHead, LMHead, ValueHead
from tts_engine.models.model import Model


@dataclass(frozen=True)
class ModelSpec:
    decoder: type[nn.Module]
    head: type[nn.Module]
    flags: ArchFlags = field(default_factory=ArchFlags)


ARCHITECTURES: dict[str, ModelSpec] = {
    "LlamaForCausalLM": ModelSpec(Decoder, LMHead),
    "MistralForCausalLM": ModelSpec(Decoder, LMHead, ArchFlags(sliding_window=True)),
    "Qwen2ForCausalLM": ModelSpec(Decoder, LMHead, ArchFlags(qkv_bias=True)),
    # process reward models: Qwen2.5-Math-PRM (score.0 / score.2), Skywork-o1-Open-PRM (v_head.summary)
    "Qwen2ForProcessRewardModel": ModelSpec(Decoder, ClassificationHead, ArchFlags(qkv_bias=True)),
    "Qwen2ForPrmModel": ModelSpec(Decoder, ValueHead, ArchFlags(qkv_bias=True)),
}


def resolve(config: dict) -> tuple[str, ModelSpec]:
    """The first of config.json's `architectures` that has an entry."""
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name, ARCHITECTURES[name]
    raise ValueError(f"unsupported architecture {names or config.get('model_type')!r}; "
                     f"supported: {', '.join(ARCHITECTURES)}")


def model_config(config: dict, generation_config: dict | None = None) -> ModelConfig:
    name, spec = resolve(config)
    return ModelConfig.from_dict(config, name, spec.flags, generation_config)


def build_model(cfg: ModelConfig, dtype: torch.dtype, device: torch.device, head: str | None = None) -> Model:
    """An empty model of cfg's architecture in dtype on device (weights come from load_weights),
    with the architecture's head or the one named (a value head on a causal LM's backbone, say)."""
    spec = ARCHITECTURES[cfg.architecture]
    heads = {h.name: h for h in HEADS}
    if head is not None and head not in heads:
        raise ValueError(f"unknown head {head!r}; heads: {', '.join(heads)}")
    head_cls = heads[head] if head is not None else spec.head
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return Model(cfg, spec.decoder, head_cls)
    finally:
        torch.set_default_dtype(default_dtype)

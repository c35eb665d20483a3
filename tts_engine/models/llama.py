"""The decoder shared by Llama, Qwen2 and Mistral (they differ only in flags in ModelConfig).

Parameter names follow Hugging Face, except that q/k/v and gate/up are packed into one matrix
each (fewer, larger matmuls); `load_weights` packs them while loading.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tts_engine.config import ModelConfig, RopeConfig
from tts_engine.kernels import elementwise_ref
from tts_engine.models.attention import Attention, AttentionMetadata
from tts_engine.models.backend import get_backend


def _param(*shape: int) -> nn.Parameter:
    # Weights are always overwritten by the loader: skip random initialisation.
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = _param(out_features, in_features)
        self.bias = _param(out_features) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = _param(dim)
        self.eps = eps
        self.ops = elementwise_ref

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x), or (norm(x + residual), x + residual) with the residual add fused in."""
        return self.ops.rms_norm(x, self.weight, self.eps, residual)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    dim = int(head_dim * rope.partial_rotary_factor)
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope.rope_type == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.rope_type == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class Rotary(nn.Module):
    """cos/sin tables of rotate-half RoPE for every position ([max_positions, rot_dim], float32)."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int):
        super().__init__()
        inv_freq = rope_inv_freq(rope, head_dim)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, cfg.qkv_bias)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size, cfg.o_bias)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.attn = Attention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.sliding_window)
        self.ops = elementwise_ref

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x).view(-1, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        # q and k heads rotated in one go
        qk = self.ops.apply_rope(qkv[:, :self.num_heads + self.num_kv_heads], positions, rotary.cos, rotary.sin)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        return self.o_proj(self.attn(q, k, qkv[:, self.num_heads + self.num_kv_heads:], meta))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias)
        self.ops = elementwise_ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor, rotary: Rotary,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        # x is the previous sublayer's output; residual the running sum (None before the first layer)
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions, rotary, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.embed_tokens.weight.requires_grad_(False)
        self.rotary = Rotary(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual, positions, self.rotary, meta)
        return self.norm(x, residual)[0]


# Hugging Face name fragment -> (our packed parameter fragment, shard index)
_PACKED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}


class CausalLM(nn.Module):
    """Decoder + LM head. `forward` returns final hidden states for every token; `compute_logits`
    applies the head only to the rows asked for (the last token of each sequence, or chosen
    positions), which is where most of a small model's head FLOPs would otherwise go."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = DecoderModel(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def set_backend(self, name: str) -> None:
        """Route attention and per-token ops through the "torch" or "triton" kernels."""
        attention_ops, elementwise_ops = get_backend(name)
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = attention_ops
            elif hasattr(m, "ops"):
                m.ops = elementwise_ops

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def shard_sizes(self, packed: str) -> list[int]:
        c = self.cfg
        return [c.q_size, c.kv_size, c.kv_size] if packed == "qkv_proj" else [c.intermediate_size] * 2

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into the model; raise on unknown, missing or misshapen ones."""
        params = dict(self.named_parameters())
        loaded: set[tuple[str, int | None]] = set()
        for name, tensor in weights:
            if "rotary_emb" in name:
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied checkpoints sometimes store a copy of the embedding
            parts = name.split(".")
            shard = None
            for i, p in enumerate(parts):
                if p in _PACKED:
                    parts[i], shard = _PACKED[p]
            target = ".".join(parts)
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {self.cfg.architecture}")
            param = params[target]
            if shard is None:
                dest = param.data
            else:
                sizes = self.shard_sizes(parts[-2])
                start = sum(sizes[:shard])
                dest = param.data.narrow(0, start, sizes[shard])
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ValueError(f"shape mismatch for {name!r}: checkpoint has {tuple(tensor.shape)}, "
                                 f"the config implies {tuple(dest.shape)}")
            dest.copy_(tensor)
            loaded.add((target, shard))
        missing = []
        for target in params:
            packed = target.split(".")[-2]
            shards = range(len(self.shard_sizes(packed))) if packed in ("qkv_proj", "gate_up_proj") else [None]
            missing += [f"{target}[{s}]" if s is not None else target for s in shards if (target, s) not in loaded]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {', '.join(missing[:4])}")

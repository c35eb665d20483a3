"""The decoder shared by Llama, Qwen2 and Mistral (they differ only in flags in ModelConfig).

Parameter names follow Hugging Face (under the checkpoint's `model.` prefix), except that q/k/v
and gate/up are packed into one matrix each (fewer, larger matmuls); `PACKED` tells the loader
where each Hugging Face tensor goes.
"""
from __future__ import annotations

import torch
from torch import nn

from tts_engine.config import ModelConfig
from tts_engine.kernels import elementwise_ref
from tts_engine.models.attention import Attention, AttentionMetadata
from tts_engine.models.layers import Linear, RMSNorm, Rotary


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, cfg.qkv_bias)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size, cfg.o_bias)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.attn = Attention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.sliding_window)
        self.ops = elementwise_ref

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary,
                meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x).view(-1, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        # q and k heads rotated in one go
        qk = self.ops.apply_rope(
            qkv[:, : self.num_heads + self.num_kv_heads], positions, rotary.cos, rotary.sin
        )
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


class Decoder(nn.Module):
    """Token ids -> final hidden states (after the last norm) of every token."""

    # Hugging Face name fragment -> (our packed parameter fragment, shard index)
    PACKED = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.embed_tokens.weight.requires_grad_(False)
        self.rotary = Rotary(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual, positions, self.rotary, meta)
        return self.norm(x, residual)[0]

    def shard_sizes(self, packed: str) -> list[int]:
        c = self.cfg
        return [c.q_size, c.kv_size, c.kv_size] if packed == "qkv_proj" else [c.intermediate_size] * 2

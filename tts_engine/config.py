"""Configuration: the model's (read from a Hugging Face config.json or GGUF metadata) and the
engine's settings, plain dataclasses at the bottom of the import order.

One decoder covers Llama, Qwen2 and Mistral; they differ in a few flags, which each architecture's
registry entry (tts_engine/models/registry.py) sets through `ArchFlags`. RoPE comes in two config
styles: hub-style `rope_theta` + `rope_scaling`, and the newer `rope_parameters` written by
transformers 5. Both end up in `RopeConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ArchFlags:
    """What an architecture's config.json does not spell out."""
    qkv_bias: bool = False          # q/k/v projections always carry a bias (Qwen2)
    sliding_window: bool = False    # honours config.sliding_window (Mistral)


@dataclass
class EngineConfig:
    """Everything an engine is built from, besides the model's own config. `LLM` (and `PRM`)
    fill it from their arguments; the engine, scheduler and runner read it."""
    model: str
    tokenizer: str | None = None
    dtype: Any = "auto"                    # "auto", "float32", "bfloat16", "float16" or a torch.dtype
    device: str | None = None              # None: CUDA when available, else the CPU
    seed: int = 0                          # seeds samples whose SamplingParams carry no seed
    kv_cache_tokens: int | None = None     # KV pool size in tokens (None: from the memory budget)
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 2048     # tokens per step (decode + prefill chunks)
    max_num_seqs: int = 256                # running sequences
    max_model_len: int | None = None       # context cap (None: the model's)
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"        # "auto", "torch" or "triton"
    enforce_eager: bool = False            # no CUDA graphs
    check_weights: bool = True             # refuse weights with NaN or infinite values (one pass)
    head: str | None = None                # the head to build ("lm_head", "v_head", "score"); None: the
                                           # architecture's (a PRM family may read another one)
    # A span shared by several decoding sequences is read once for all of them (cascade) when
    # sharers x span tokens reaches this (None: never); see ModelRunner.
    cascade_min_work: int | None = 2048
    # Overlap the host's work with the device's (engine.py): the next step is prepared while one
    # runs. None: on CUDA only. On the CPU both halves are Python under one GIL: the toy study's
    # slice ran 110 s overlapped against 67 s step by step on a 2-core VM (test_toy's fixture).
    overlap: bool | None = None

    def __post_init__(self):
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.kv_cache_tokens is not None and (
            not isinstance(self.kv_cache_tokens, int) or self.kv_cache_tokens < 2
        ):
            raise ValueError(f"kv_cache_tokens must be an integer >= 2, got {self.kv_cache_tokens!r}")
        length = self.max_model_len
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"max_model_len must be an integer >= 1, got {self.max_model_len!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")


@dataclass
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    # llama3 scaling only
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    partial_rotary_factor: float = 1.0


@dataclass
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig = field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False          # Qwen2 (and Llama with attention_bias)
    o_bias: bool = False            # Llama with attention_bias
    mlp_bias: bool = False
    sliding_window: int | None = None   # Mistral; None = full attention
    hidden_act: str = "silu"
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    torch_dtype: str | None = None
    num_labels: int = 2             # outputs of a classification head

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_dict(cls, raw: dict, architecture: str, flags: ArchFlags = ArchFlags(),
                  generation_config: dict | None = None) -> "ModelConfig":
        act = raw.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"unsupported hidden_act {act!r}; only silu is supported")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size",
                               "num_hidden_layers", "num_attention_heads") if k not in raw]
        if missing:
            raise ValueError(f"config.json lacks required keys: {', '.join(missing)}")
        num_heads = raw["num_attention_heads"]
        hidden = raw["hidden_size"]
        head_dim = raw.get("head_dim") or hidden // num_heads
        num_kv = raw.get("num_key_value_heads") or num_heads
        if num_heads % num_kv:
            raise ValueError(
                f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv}"
            )

        if raw.get("use_sliding_window"):
            # Qwen2 applies the window only to some layers (max_window_layers); none of the released
            # checkpoints turn it on, so refuse rather than compute something different.
            raise ValueError("use_sliding_window=true (per-layer sliding windows) is not supported")
        sliding = raw.get("sliding_window") if flags.sliding_window else None
        bias = bool(raw.get("attention_bias", False))

        eos: list[int] = []
        for src in (raw, generation_config or {}):
            e = src.get("eos_token_id")
            for t in (e if isinstance(e, list) else [e]):
                if isinstance(t, int) and t not in eos:
                    eos.append(t)
        return cls(
            architecture=architecture,
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=num_kv,
            head_dim=head_dim,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            rope=parse_rope(raw),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=flags.qkv_bias or bias,
            o_bias=bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            sliding_window=sliding,
            eos_token_ids=eos,
            bos_token_id=raw.get("bos_token_id"),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            num_labels=raw.get("num_labels") or len(raw.get("id2label") or {}) or 2,
        )


def parse_rope(raw: dict) -> RopeConfig:
    """Read RoPE settings from either config style into one RopeConfig."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in params and "rope_type" not in params:
        params = None  # per-layer-type dicts (not used by these architectures)
    if params is None:
        params = dict(raw.get("rope_scaling") or {})
        params.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    return RopeConfig(
        theta=float(params.get("rope_theta", raw.get("rope_theta", 10000.0))),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", raw.get("max_position_embeddings", 8192))
        ),
        partial_rotary_factor=float(
            params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
        ),
    )

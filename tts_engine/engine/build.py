"""Building an engine's parts from an EngineConfig: the device and dtype, the tokenizer, the model
with its weights and attention backend, the KV pool's size, the model runner and its CUDA graphs.
Done once; the step loop (engine.py) only uses what this returns."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from tts_engine.config import EngineConfig, ModelConfig
from tts_engine.engine.memory import activation_bytes, kv_cache_tokens
from tts_engine.engine.runner import ModelRunner
from tts_engine.loader import find_checkpoint
from tts_engine.models.backend import resolve_backend
from tts_engine.models.model import Model
from tts_engine.models.registry import build_model, model_config
from tts_engine.tokenizer import Tokenizer

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}

_CPU_KV_BYTES = 1 << 30     # the KV pool on the CPU, unless kv_cache_tokens says otherwise


@dataclass
class Parts:
    device: torch.device
    dtype: torch.dtype
    model_config: ModelConfig
    tokenizer: Tokenizer
    max_model_len: int
    eos_token_ids: set[int]
    model: Model
    kv_cache_tokens: int
    runner: ModelRunner


def build(config: EngineConfig) -> Parts:
    device = resolve_device(config.device)
    ckpt = find_checkpoint(config.model)
    cfg = model_config(ckpt.config, ckpt.generation_config)
    dtype = resolve_dtype(config.dtype, cfg.torch_dtype, device)
    tokenizer = Tokenizer.load(ckpt, config.tokenizer)
    max_model_len = min(config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
    eos_token_ids = set(cfg.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos_token_ids.add(tokenizer.eos_token_id)

    model = build_model(cfg, dtype, device, config.head)
    model.load_weights(ckpt.weights(), check_finite=config.check_weights)
    model.eval()
    backend = resolve_backend(config.attention_backend, device)
    model.set_backend(backend)

    tokens = config.kv_cache_tokens or _default_kv_tokens(config, cfg, model, dtype, device)
    runner = ModelRunner(model, config, tokens, max_model_len)
    if device.type == "cuda" and backend == "triton" and not config.enforce_eager:
        try:
            runner.capture_decode_graphs(min(config.max_num_seqs, 256))
        except RuntimeError as e:   # a failed or inexact capture only costs speed
            warnings.warn(f"CUDA graphs disabled, decode runs eagerly: {e}")
            runner.graphs = None
    return Parts(device, dtype, cfg, tokenizer, max_model_len, eos_token_ids, model, tokens, runner)


def _default_kv_tokens(config: EngineConfig, cfg: ModelConfig, model: Model, dtype: torch.dtype,
                       device: torch.device) -> int:
    itemsize = dtype.itemsize
    bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
    if device.type != "cuda":
        return _CPU_KV_BYTES // bytes_per_token
    free, total = torch.cuda.mem_get_info(device)
    tensors = [*model.parameters(), *model.buffers()]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    activations = activation_bytes(cfg, itemsize, config.max_num_batched_tokens, config.max_num_seqs)
    share = config.gpu_memory_utilization
    tokens = kv_cache_tokens(total, free, share, weights, activations, bytes_per_token)
    if tokens < 2:
        gib = 1 << 30
        raise ValueError(
            f"no room for a KV cache: gpu_memory_utilization={share} of {total / gib:.1f} GiB, less "
            f"{weights / gib:.1f} GiB of weights and {activations / gib:.1f} GiB for activations, with "
            f"{free / gib:.1f} GiB free now. gpu_memory_utilization is this engine's share of the GPU: "
            f"two engines on one GPU need shares that sum to at most ~0.9 (say 0.45 each); or pass "
            f"kv_cache_tokens")
    return tokens


def resolve_device(device: str | None) -> torch.device:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but CUDA is not available (this torch: {torch.__version__})"
            )
        # Triton launches and CUDA graphs use the current device: make it ours (cuda:1 etc.).
        # (set_device needs an index: plain "cuda" means the current device.)
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        torch.cuda.set_device(dev)
    return dev


def resolve_dtype(dtype, config_dtype: str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # The checkpoint's dtype on GPUs; float32 on the CPU, where half-precision matmuls are slow.
        if device.type == "cpu" or config_dtype is None:
            return torch.float32
        dtype = config_dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]

"""FLOPs (2 per multiply-add): the decoder's forward pass, counted for what is computed, and the
paper's Table 4 view of a study, inference plus pre-training (6 x parameters x tokens). Each head
counts its own (models/heads.py)."""
from __future__ import annotations

from tts_engine.config import ModelConfig


def linear_flops_per_token(cfg: ModelConfig) -> int:
    """Weight matmuls of all layers for one token (embedding lookup is free; the LM head is separate)."""
    h = cfg.hidden_size
    per_layer = h * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * h + 3 * h * cfg.intermediate_size
    return 2 * cfg.num_layers * per_layer


def attention_flops(cfg: ModelConfig, start: int, end: int) -> int:
    """QK^T and PV for query positions [start, end), each attending to every earlier position and itself."""
    if cfg.sliding_window is None:
        keys = (end * (end + 1) - start * (start + 1)) // 2
    else:
        keys = sum(min(p + 1, cfg.sliding_window) for p in range(start, end))
    return 2 * 2 * cfg.num_layers * cfg.q_size * keys


def decoder_flops(cfg: ModelConfig, spans: list[tuple[int, int]]) -> int:
    """The decoder computing positions [start, end) of each sequence (its head not included)."""
    per_token = linear_flops_per_token(cfg)
    return sum(per_token * (e - s) + attention_flops(cfg, s, e) for s, e in spans)


def decode_token_cost(cfg: ModelConfig, head_row: int) -> tuple[int, int, int | None]:
    """(a, b, window): a decode step's FLOPs for one token whose context is n tokens (itself
    included) and its head row (head_row FLOPs) are a + b * n, or a + b * min(n, window) with a
    sliding window; what decoder_flops(cfg, [(n - 1, n)]) + head_row gives, without its per-call
    work (the engine counts every decoding sequence every step)."""
    return linear_flops_per_token(cfg) + head_row, 2 * 2 * cfg.num_layers * cfg.q_size, cfg.sliding_window


def pretraining_flops(parameters: int, tokens: int) -> int:
    """Kaplan's 6 x N x D, as the paper's Table 4 counts a model's training."""
    return 6 * parameters * tokens


# Peak dense BF16 tensor FLOP/s and memory bandwidth (bytes/s) from NVIDIA's datasheets (A100 SXM
# 80GB; H100 SXM; H200 SXM), for eFLOPs: their ratio is the arithmetic intensity at which a kernel
# stops being bound by memory (about 153, 295 and 206 FLOPs per byte).
GPUS = {"a100": (312e12, 2.039e12), "h100": (989e12, 3.35e12), "h200": (989e12, 4.8e12)}


def eflops(flops: float, bytes_moved: float, gpu: str) -> float:
    """Kinetics' effective FLOPs (arXiv 2506.05333): compute plus memory traffic at the GPU's
    arithmetic intensity, so that memory-bound decoding is costed by the reads it waits on."""
    peak, bandwidth = GPUS[gpu]
    return flops + peak / bandwidth * bytes_moved

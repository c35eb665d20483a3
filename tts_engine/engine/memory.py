"""How much of a GPU an engine takes for its KV pool.

`gpu_memory_utilization` means what it means in vLLM: the share of the card that this engine may
use in all, weights and activations included. The KV pool gets that share less the engine's
weights and an estimate of its activation peak, and never more than is free when the pool is
allocated. So two engines on one GPU (a policy and a PRM) each take their own share and must be
given shares that fit together: at most ~0.9 summed, for example 0.45 and 0.45, or 0.6 for an 8B
policy and 0.3 for a 1.5B PRM. Pure functions of byte counts, so the sizing is tested on a CPU.
"""
from __future__ import annotations

from tts_engine.config import ModelConfig

CUDA_CONTEXT_BYTES = 512 << 20      # CUDA context, cuBLAS workspaces, Triton and CUDA-graph pools


def activation_bytes(cfg: ModelConfig, dtype_bytes: int, max_num_batched_tokens: int,
                     max_num_seqs: int) -> int:
    """A bound on one engine's memory besides weights and KV pool, at its largest step."""
    per_token = (4 * cfg.hidden_size + cfg.q_size + 2 * cfg.kv_size + 3 * cfg.intermediate_size) * dtype_bytes
    forward = 2 * max_num_batched_tokens * per_token      # a step's tensors, and as much for temporaries
    logits = 3 * max_num_seqs * cfg.vocab_size * 4          # float32 logits, the sampler's workspace, forks
    partials = max_num_seqs * cfg.num_heads * 64 * cfg.head_dim * 4   # split-KV partials of 4 spans
    return forward + logits + partials + CUDA_CONTEXT_BYTES


def kv_cache_tokens(total: int, free: int, utilization: float, weight_bytes: int, activations: int,
                    bytes_per_token: int) -> int:
    """KV pool size in tokens. total / free: the card's memory and what is free now, after this
    engine's weights were loaded (as torch.cuda.mem_get_info reports them). May be <= 0: no room."""
    share = utilization * total - weight_bytes - activations
    return int(min(share, free - activations) // bytes_per_token)

"""Result objects, shaped like vLLM's RequestOutput / CompletionOutput."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float
    finish_reason: str              # "stop" (EOS, stop string or stop token) or "length"
    stop_reason: str | int | None = None   # the stop string or stop token id that ended it, if any
    logprobs: list[dict[int, float]] | None = None   # per token: {token_id: logprob}, sampled token included


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    num_cached_tokens: int = 0      # prompt tokens served from the prefix cache (summed over the n samples)

"""Result objects, shaped like vLLM's RequestOutput / CompletionOutput / Logprob."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tts_engine.work import Work

if TYPE_CHECKING:
    import torch


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None            # 1 = the most likely token
    decoded_token: str | None = None


# per position: {token_id: Logprob}, the chosen token included
SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]   # None for the first prompt token


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None       # "stop" (EOS, stop string or stop token) or "length"
    stop_reason: str | int | None = None   # the stop string or stop token id that ended it, None for EOS
    lora_request: None = None
    # beyond vLLM (SamplingParams.return_hidden_states): [1, hidden], the final state its last
    # token was sampled from, when a stop string, stop token or EOS ended it
    hidden_states: torch.Tensor | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True
    num_cached_tokens: int = 0      # prompt tokens served from the prefix cache (summed over the n samples)
    # beyond vLLM: what the engine spent on this request, for studies that attribute compute per problem
    work: Work | None = None

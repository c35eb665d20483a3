"""SamplingParams: vLLM's, with vLLM's names and defaults, validated on construction.

Fields vLLM has that this engine does not implement are accepted only at their "off" value, so a
client that never sets them runs unchanged; setting one raises a ValueError that names it. An
unknown name is a ValueError too (never a silent ignore, never a bare TypeError).
"""
from __future__ import annotations

import copy
import math
from dataclasses import MISSING, dataclass, field, fields

from tts_engine.text import check_unicode

# vLLM fields this engine does not implement, with the value that means "off".
NOT_SUPPORTED = {"best_of": None, "logits_processors": None, "truncate_prompt_tokens": None,
                 "guided_decoding": None, "structured_outputs": None, "logit_bias": None,
                 "allowed_token_ids": None, "bad_words": None, "extra_args": None, "use_beam_search": False,
                 "output_text_buffer_length": 0}


@dataclass(init=False)
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0     # subtracted from the logits of tokens already generated
    frequency_penalty: float = 0.0    # ... times how often each was generated
    repetition_penalty: float = 1.0   # logits of prompt and generated tokens: / p if positive, * p if not
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 or -1 = off
    min_p: float = 0.0                # drop tokens below min_p x the most likely one's probability
    # Sample k of a request draws its uniforms from a generator seeded with seed + k, whatever else
    # is batched. On GPUs the logits themselves can differ in the last bits with the batch (GEMM
    # tiling, split-KV counts, cascade groups), so a draw on a near-tie may differ between batches.
    seed: int | None = None
    stop: list[str] = field(default_factory=list)     # matched on the text
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    max_tokens: int | None = 16       # None: up to the model's context
    min_tokens: int = 0               # no EOS, stop token or stop string before this many tokens
    logprobs: int | None = None       # also return this many top logprobs per generated token
    prompt_logprobs: int | None = None   # logprobs of the prompt's tokens (and this many top ones)
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False   # True keeps the matched stop string in `text`
    # beyond vLLM: each completion that a stop string, stop token or EOS ends also returns the final
    # hidden state (after the last norm) from which its last token was sampled (CompletionOutput.
    # hidden_states), taken from the step's own forward pass
    return_hidden_states: bool = False

    def __init__(self, *args, **kwargs):
        if args:
            raise ValueError("SamplingParams takes keyword arguments, as vLLM's does: "
                             "SamplingParams(temperature=0.7, max_tokens=256, ...)")
        names = {f.name for f in fields(self)}
        unknown = sorted(set(kwargs) - names - set(NOT_SUPPORTED))
        if unknown:
            raise ValueError(f"SamplingParams got unknown parameter(s) {', '.join(unknown)}")
        for name, off in NOT_SUPPORTED.items():
            same_as_n = name == "best_of" and kwargs[name] == kwargs.get("n", 1) if name in kwargs else False
            if name in kwargs and kwargs[name] != off and not same_as_n:
                raise ValueError(f"SamplingParams({name}={kwargs[name]!r}) is not supported by tts-engine "
                                 f"(leave {name} at {off!r})")
        for f in fields(self):
            default = f.default if f.default_factory is MISSING else f.default_factory()
            setattr(self, f.name, kwargs.get(f.name, default))
        self.__post_init__()

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (off) or a positive integer, got {self.top_k!r}")
        if self.top_k == -1:
            self.top_k = 0
        _integer("n", self.n, 1)
        _integer("min_tokens", self.min_tokens, 0)
        if self.max_tokens is not None:
            _integer("max_tokens", self.max_tokens, 1)
            if self.min_tokens > self.max_tokens:
                raise ValueError(f"min_tokens={self.min_tokens} is larger than max_tokens={self.max_tokens}")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), 0)
        _number("temperature", self.temperature, lambda x: x >= 0, ">= 0")
        _number("top_p", self.top_p, lambda x: 0 < x <= 1, "in (0, 1]")
        _number("min_p", self.min_p, lambda x: 0 <= x <= 1, "in [0, 1]")
        _number("repetition_penalty", self.repetition_penalty, lambda x: x > 0, "> 0")
        _number("presence_penalty", self.presence_penalty, lambda x: -2 <= x <= 2, "in [-2, 2]")
        _number("frequency_penalty", self.frequency_penalty, lambda x: -2 <= x <= 2, "in [-2, 2]")
        if self.seed is not None:
            _integer("seed", self.seed, -(1 << 63))
            if self.seed >= 1 << 64:
                raise ValueError(f"seed must fit in 64 bits (-2**63 <= seed < 2**64), got {self.seed}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        for s in self.stop:
            check_unicode("stop string", s)
        if any(isinstance(t, bool) or not isinstance(t, int) for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be integers, got {self.stop_token_ids!r}")
        if not isinstance(self.return_hidden_states, bool):
            raise ValueError(f"return_hidden_states must be True or False, got {self.return_hidden_states!r}")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings need detokenize=True (they are matched on the text)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def clone(self) -> "SamplingParams":
        return copy.deepcopy(self)


def _integer(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value, ok, bounds: str) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")


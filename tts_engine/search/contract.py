"""What a strategy may call on what it drives, and nothing more: the policy samples continuations
of token-id prompts and says what each request cost (all at once with `generate`, or one step at a
time with `add_request` / `step` / `abort_request`, for searches that react mid-flight); the scorer
(a PRM) scores each step of trajectories and says what each cost. `LLM` and `PRM` satisfy these
with their public methods, as any stand-in must (tests/test_search.py checks both); no strategy
reaches into an engine."""
from __future__ import annotations

from typing import Protocol

from tts_engine.outputs import RequestOutput
from tts_engine.sampling_params import SamplingParams
from tts_engine.tokenizer import Tokenizer
from tts_engine.work import Work


class Policy(Protocol):
    @property
    def max_model_len(self) -> int:
        """Tokens a prompt and its continuation may hold together."""

    def get_tokenizer(self) -> Tokenizer:
        """Writes prompts, and re-encodes a step's text (encode, decode, apply_chat_template)."""

    def generate(self, prompts: list[dict], sampling_params: list[SamplingParams],
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """One output per {"prompt_token_ids": ids} prompt, in order, each with its `work`."""

    def add_request(self, prompt: dict, sampling_params: SamplingParams) -> str:
        """Queue a {"prompt_token_ids": ids} prompt; its request id."""

    def step(self) -> list[RequestOutput]:
        """One step: per request, the samples that finished (or were cancelled), with their work."""

    def abort_request(self, request_id: str, indices: list[int] | None = None) -> None:
        """Cancel a request's running samples (all, or these); `step` returns them, "cancelled"."""

    def has_unfinished_requests(self) -> bool:
        """Whether a request of add_request has samples left."""


class Scorer(Protocol):
    def score_with_work(self, questions: list[str], trajectories: list[list[str]]
                        ) -> tuple[list[list[float]], list[Work]]:
        """A score in [0, 1] per step of each trajectory, and what each trajectory cost."""

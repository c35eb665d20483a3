"""One generated sample: its tokens, where their K/V live, and how far it has been computed."""
from __future__ import annotations

import enum

import torch

from tts_engine.engine.cache import Node
from tts_engine.sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


class Sequence:
    def __init__(self, seq_id: int, request_id: int, index: int, prompt_token_ids: list[int],
                 params: SamplingParams, seed: int):
        self.seq_id, self.request_id, self.index = seq_id, request_id, index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.status = Status.WAITING
        # Encode-only sequences (LLM.encode) run prefill, keep the final hidden states at these
        # positions, and sample nothing.
        self.hidden_positions: list[int] | None = None
        self.hidden_states: dict[int, torch.Tensor] = {}
        # KV bookkeeping: slots[i] holds the K/V of token i for i < len(slots). The first
        # num_tree of them belong to the radix tree (locked through `node`); the rest are private.
        self.slots: list[int] = []
        self.num_computed = 0            # tokens whose K/V are written (or being written this step)
        self.num_tree = 0
        self.node: Node | None = None
        # While running, the sequence owns row `row` of the runner's slot table, whose first
        # num_synced entries already equal slots[:num_synced] (only the rest is written each step).
        self.row: int | None = None
        self.num_synced = 0
        self.forks: list[Sequence] = []   # siblings (the other samples of the request) waiting on this prefill
        self.admitted = False            # admitted at least once (prompt stats are counted then)
        self.num_preemptions = 0
        self.num_cached_prompt_tokens = 0
        # Sampling state. A private generator per sample makes its draws independent of the batch.
        self.generator = torch.Generator().manual_seed(seed)
        self.cumulative_logprob = 0.0
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_prefilling(self) -> bool:
        """True until every token but the newest has K/V (the newest is fed in the next step)."""
        return self.num_computed < len(self.token_ids) - 1

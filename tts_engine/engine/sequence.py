"""A request and its sequences: each sample's tokens, where their K/V live, how far it has been
computed, and what a step that computes it yields (a sampled token, kept hidden states, or both)."""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

import torch

from tts_engine.engine.cache import Node, Prefix, RadixCache
from tts_engine.sampling_params import SamplingParams
from tts_engine.work import Work


class Status(enum.Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


class Sequence:
    def __init__(self, seq_id: int, request_id: int, index: int, prompt_token_ids: list[int],
                 params: SamplingParams, seed: int, hidden_positions: list[int] | None = None,
                 generates: bool = True, max_tokens: int | None = None):
        self.seq_id, self.request_id, self.index = seq_id, request_id, index
        self.token_ids = list(prompt_token_ids) if generates else prompt_token_ids   # (grows if it generates)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.max_tokens = max_tokens or params.max_tokens   # params.max_tokens=None: set by the engine
        self.status = Status.WAITING
        # What the sequence is for: generating tokens, and/or keeping the final hidden states of
        # these prompt positions (LLM.encode; a PRM's step tags). See `outputs_after`.
        self.generates = generates
        self.hidden_positions = sorted(set(hidden_positions)) if hidden_positions else None
        self.hidden_states: dict[int, torch.Tensor] = {}
        self.last_hidden: torch.Tensor | None = None   # the state its newest token was sampled from
        # KV bookkeeping: the K/V of the first num_tree tokens are the radix tree's, on the path
        # to `node` (locked by it; node.depth == num_tree); those of tokens num_tree..num_computed
        # are the sequence's own, in slots `own`. Nothing here grows with the cached context, so
        # forking, publishing and finishing cost the new tokens, not the prompt.
        self.own: list[int] = []
        self.num_computed = 0            # tokens whose K/V are written (or being written this step)
        self.num_tree = 0
        self.node: Node | None = None
        self.after: Prefix | None = None     # a cached prefix its tokens extend (Engine.encode)
        self.published: Prefix | None = None  # where its tokens ended in the tree when it finished
        # While running, the sequence owns row `row` of the runner's slot table (the runner keeps
        # its entries equal to `slots`).
        self.row: int | None = None
        # Tokens sampled on the device but not yet appended here: with the overlapped loop the next
        # step is scheduled before the last one's tokens reach the host (so this is at most 1 when
        # a step is scheduled).
        self.in_flight = 0
        self.forks: list[Sequence] = []  # siblings (the other samples of the request) waiting on this prefill
        self.admitted = False            # admitted at least once (prompt stats are counted then)
        self.num_preemptions = 0
        self.num_cached_prompt_tokens = 0
        self.computed_tokens = 0         # prompt tokens computed for it (after a preemption too)
        self.flops = 0                   # forward FLOPs spent on it (flops.py)
        self.saved_flops = 0             # what its cached prompt prefix would have cost
        self.weight_bytes = self.kv_read_bytes = self.kv_write_bytes = 0.0   # bytes moved for it
        # Sampling state: a private generator per sample makes its draws independent of the batch.
        self.rng = random.Random(seed)
        self.cumulative_logprob = 0.0
        # per generated token {token_id: (logprob, rank)}, the chosen token first (LLM makes Logprobs)
        self.logprobs: list[dict[int, tuple[float, int]]] | None = [] if params.logprobs is not None else None
        self.output_counts: dict[int, int] = {}   # kept only when presence/frequency penalties need it
        # any penalty on its logits (read at every step by logits_process.needs_processing)
        self.penalized = (params.repetition_penalty != 1 or params.presence_penalty != 0
                          or params.frequency_penalty != 0)
        self.detokenizer = None          # set by the engine when stop strings need the text
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def length(self) -> int:
        """Tokens including the one in flight: what the scheduler plans with."""
        return len(self.token_ids) + self.in_flight

    def is_full(self, max_model_len: int, ahead: int = 0) -> bool:
        """No room for another token once `ahead` tokens in flight have joined: max_tokens are
        generated, or the context is full."""
        n = len(self.token_ids) + ahead
        return n - self.num_prompt_tokens >= self.max_tokens or n >= max_model_len

    @property
    def slots(self) -> list[int]:
        """Every computed token's slot, in order (O(context): for checks and audits, not the step)."""
        node, own = self.node, self.own        # (read once: another thread may release the sequence)
        return (RadixCache.path_slots(node) if node is not None else []) + own

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_prefilling(self) -> bool:
        """True while prompt work is left: every token but the newest needs K/V first (the newest
        is fed by a decode step), and kept positions are computed in prefill, never left to decode."""
        n = self.length
        if self.num_computed < n - 1:
            return True
        last_kept = self.hidden_positions[-1] if self.hidden_positions else -1
        return self.num_computed < n and (not self.generates or last_kept >= self.num_computed)

    def outputs_after(self, start: int, end: int) -> tuple[bool, list[int]]:
        """What computing tokens start..end yields: whether the sequence then samples its next
        token (its whole context is computed and it generates), and which of its kept positions
        fall in the chunk. The one place that decides; scheduler, runner and engine all ask here."""
        samples = self.generates and end == self.length
        keep = [p for p in self.hidden_positions if start <= p < end] if self.hidden_positions else []
        return samples, keep

    @property
    def cache_limit(self) -> int:
        """How many leading tokens may come from the cache: all but the last when the sequence
        samples (its logits are needed), and none from the first kept position on (it must be computed)."""
        return min([len(self.token_ids) - self.generates, *(self.hidden_positions or [])])


@dataclass
class Request:
    """A prompt with its parameters and its n sequences (one per sample)."""
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)

    def work(self, seqs: list[Sequence] | None = None) -> Work:
        """What the engine spent on this request (or on these of its samples)."""
        seqs = self.seqs if seqs is None else seqs
        return Work(len(self.prompt_token_ids) * len(seqs), sum(s.num_cached_prompt_tokens for s in seqs),
                    sum(s.computed_tokens for s in seqs), sum(s.num_output_tokens for s in seqs),
                    sum(s.flops for s in seqs), sum(s.saved_flops for s in seqs),
                    sum(s.weight_bytes for s in seqs), sum(s.kv_read_bytes for s in seqs),
                    sum(s.kv_write_bytes for s in seqs))

"""Requests as the engine takes them: checked against the model, its context and the KV pool
before anything is queued, each with its n sequences and their seeds."""
from __future__ import annotations

import random

from tts_engine.engine.sequence import Request, Sequence
from tts_engine.sampling_params import SamplingParams


class RequestMaker:
    def __init__(self, vocab_size: int, max_model_len: int, kv_cache_tokens: int, seed: int):
        self.vocab_size, self.max_model_len, self.kv_cache_tokens = vocab_size, max_model_len, kv_cache_tokens
        self._rng = random.Random(seed)     # seeds of samples whose params carry none
        self._next_request = 0
        self._next_seq = 0

    def __call__(self, prompt_token_ids: list[int], params: SamplingParams, prompt: str | None = None,
                 hidden_positions: list[int] | None = None, generates: bool = True,
                 trusted: bool = False) -> Request:
        """A request and its n sequences, checked against the model and the KV pool; not queued yet
        (callers check all of theirs before adding any). With prompt_logprobs the first sequence
        keeps the hidden states of every prompt position but the last (no cache hits for it).
        trusted: every id is known to be inside the vocabulary (Engine.encode), so they are not
        checked one by one."""
        ids = prompt_token_ids
        if not ids:
            raise ValueError("prompt is empty (no tokens)")
        vocab = self.vocab_size
        bad = [] if trusted else [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]!r} is outside the vocabulary [0, {vocab})")
        for name in ("logprobs", "prompt_logprobs"):
            if (getattr(params, name) or 0) > vocab:
                raise ValueError(f"{name}={getattr(params, name)} is larger than the vocabulary "
                                 f"({vocab} tokens)")
        bad = [t for t in params.stop_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"stop_token_ids: {bad[0]} is outside the vocabulary [0, {vocab})")
        if generates and len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but the model's context is {self.max_model_len} "
                             f"(no room to generate)")
        if len(ids) > self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but the model's context is {self.max_model_len}")
        max_tokens = params.max_tokens or self.max_model_len - len(ids)
        need = min(len(ids) + max_tokens, self.max_model_len) if generates else len(ids)
        if need > self.kv_cache_tokens:
            raise ValueError(f"a sequence needs up to {need} KV slots (prompt {len(ids)} + max_tokens "
                             f"{max_tokens}) but kv_cache_tokens={self.kv_cache_tokens}")
        if generates and params.prompt_logprobs is not None:
            hidden_positions = list(range(len(ids) - 1))
        # (an encode-only request never grows its tokens: it keeps the caller's list, as
        # Engine.encode documents, so a long prompt is not copied twice more every round)
        request = Request(self._next_request, prompt, list(ids) if generates else ids, params)
        self._next_request += 1
        for k in range(params.n):
            seed = params.seed + k if params.seed is not None else self._rng.getrandbits(63)
            keep = hidden_positions if k == 0 or not generates else None
            request.seqs.append(Sequence(self._next_seq, request.request_id, k, ids, params, seed,
                                         keep or None, generates, max_tokens))
            self._next_seq += 1
        return request

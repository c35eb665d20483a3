"""Incremental detokenization: the text each new token adds, for matching stop strings as tokens
arrive. Each sequence keeps a `tokenizers` DecodeStream (Rust), which decodes the new token
against the few before it, so a step costs one short call per sequence however long the output
is (vLLM's fast incremental detokenizer does the same). Text ending in an incomplete UTF-8
sequence is held back until its bytes complete.
"""
from __future__ import annotations

from tokenizers.decoders import DecodeStream


class IncrementalDetokenizer:
    def __init__(self, tokenizer, start: int, skip_special_tokens: bool = True):
        """Decodes ids[start:] of the lists later passed to `step` (the output after the prompt);
        tokenizer: ours or transformers' fast one (anything with a `backend_tokenizer`)."""
        self._backend = tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._read = start

    def step(self, ids: list[int]) -> str:
        """ids: the whole sequence so far, newest token last. Returns the text the new tokens add."""
        pieces = [self._stream.step(self._backend, t) for t in ids[self._read:]]
        self._read = len(ids)
        return "".join(p for p in pieces if p)

    def push(self, token: int) -> str:
        """`step` for a sequence that grew by exactly this token (the engine's case)."""
        self._read += 1
        return self._stream.step(self._backend, token) or ""

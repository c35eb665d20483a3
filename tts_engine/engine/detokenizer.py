"""Incremental detokenization (vLLM's scheme): each new token decodes only a short window at the
tail instead of the whole output, so matching stop strings on a 2,048-token step costs the same
per token as on a short one.

The window starts a few tokens back (`prefix_offset`), and the new text is what decoding the
window adds to decoding its part before `read_offset`: tokenizers that drop a leading space or
merge bytes at a window's start do the same to both, so the difference is exact. Text ending in
an incomplete UTF-8 sequence (U+FFFD) is held back until the bytes complete.
"""
from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, start: int, skip_special_tokens: bool = True):
        """Decodes ids[start:] of the lists later passed to `step` (the output after the prompt)."""
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.prefix_offset = self.read_offset = start

    def step(self, ids: list[int]) -> str:
        """ids: the whole sequence so far, newest token last. Returns the text the new tokens add."""
        decode = self.tokenizer.decode
        prefix = decode(ids[self.prefix_offset:self.read_offset], self.skip_special_tokens)
        full = decode(ids[self.prefix_offset:], self.skip_special_tokens)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(ids)
            return full[len(prefix):]
        return ""

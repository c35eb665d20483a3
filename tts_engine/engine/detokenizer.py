"""Incremental detokenization (vLLM's scheme): each new token decodes only a short window at the
tail instead of the whole output, so matching stop strings on a 2,048-token step costs the same
per token as on a short one.

The window starts a few tokens back (`prefix_offset`), and the new text is what decoding the
window adds to decoding its part before `read_offset`: tokenizers that drop a leading space or
merge bytes at a window's start do the same to both, so the difference is exact. Text ending in
an incomplete UTF-8 sequence (U+FFFD) is held back until the bytes complete. A step's sequences
are detokenized together (`step_all`: one batched call for all their windows).
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
        return step_all([self], [ids])[0]

    def windows(self, ids: list[int]) -> tuple[list[int], list[int]]:
        return ids[self.prefix_offset:self.read_offset], ids[self.prefix_offset:]

    def advance(self, prefix: str, full: str, length: int) -> str:
        """The new text, given the windows' texts; length: len(ids)."""
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, length
            return full[len(prefix):]
        return ""


def step_all(detokenizers: list[IncrementalDetokenizer], ids: list[list[int]]) -> list[str]:
    """`step` for many sequences at once (one tokenizer, the same skip_special_tokens): their
    windows decoded in two batched calls instead of two calls each."""
    if not detokenizers:
        return []
    first = detokenizers[0]
    windows = [d.windows(x) for d, x in zip(detokenizers, ids)]
    texts = first.tokenizer.decode_batch([w for pair in windows for w in pair], first.skip_special_tokens)
    return [d.advance(texts[2 * i], texts[2 * i + 1], len(x))
            for i, (d, x) in enumerate(zip(detokenizers, ids))]

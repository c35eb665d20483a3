"""Incremental detokenization: the text new tokens add, for matching stop strings as tokens
arrive. Each sequence keeps a `tokenizers` DecodeStream (Rust), which decodes a new token against
the few before it, so a call costs the same however long the output is (vLLM's fast incremental
detokenizer does the same). Text ending in an incomplete UTF-8 sequence is held back until its
bytes complete.

Most tokens cannot complete a stop string, and need not be decoded when they arrive: a match
that ends in a token's text holds the stop string's last character, and a token adds (when no
bytes are held back) only characters its own text has (or U+FFFD), plus spaces some decoders put between
tokens (`stop_triggers`). The others wait, undecoded, until a token that might complete a match
arrives; `step` then decodes them all, so the text matched is the same, and a match is found at
the same token, as if every token had been decoded on arrival.
"""
from __future__ import annotations

from tokenizers.decoders import DecodeStream

REPLACEMENT = "\ufffd"    # what decoding shows for bytes of an unfinished character


class IncrementalDetokenizer:
    def __init__(self, tokenizer, start: int, skip_special_tokens: bool = True, triggers: bytes = b""):
        """Decodes ids[start:] of the lists later passed to `step` (the output after the prompt);
        tokenizer: ours or transformers' fast one (anything with a `backend_tokenizer`);
        triggers: `stop_triggers`, for the caller to read."""
        self.triggers = triggers
        self._backend = tokenizer.backend_tokenizer
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._read = start
        self.holding = False      # the last token decoded added no text (bytes held back, or a skipped token)

    def step(self, ids: list[int]) -> str:
        """ids: the whole sequence so far, newest last. Returns the text the tokens not decoded yet add."""
        if self._read == len(ids):
            return ""
        pieces = [self._decode(t) for t in ids[self._read:]]
        self._read = len(ids)
        self.holding = pieces[-1] is None
        return "".join(p for p in pieces if p)

    def _decode(self, token: int) -> str | None:
        try:
            return self._stream.step(self._backend, token)
        except Exception as e:
            # The stream's window no longer decodes to the text it gave (a byte-fallback run that
            # turned out invalid shows as U+FFFD, one per byte): the text given stands, and the
            # stream starts again at this token.
            if "Invalid prefix" not in str(e):
                raise
            self._stream = DecodeStream(skip_special_tokens=self._skip)
            return self._stream.step(self._backend, token)


def token_texts(tokenizer, skip_special_tokens: bool) -> list[str]:
    """Each token id's text, decoded alone (one batched call into the Rust tokenizer)."""
    backend = tokenizer.backend_tokenizer
    n = backend.get_vocab_size(with_added_tokens=True)
    return backend.decode_batch([[i] for i in range(n)], skip_special_tokens=skip_special_tokens)


def stop_triggers(texts: list[str], stops: list[str], vocab_size: int) -> bytes:
    """Per token id, 1 if its arrival may complete a match of one of `stops`: its text (decoded
    alone) holds a stop's last character; or, for a last character outside ASCII, its text holds
    bytes of an unfinished character, which may complete into that one. (An ASCII character is
    one byte, never part of another character's, and shows in the token's text even when other
    bytes of it are unfinished.) Ids the tokenizer does not know are always 1, and all are for a
    stop ending in a space, which decoders add between tokens (Metaspace, WordPiece) rather than
    take from one token's text."""
    ends = {s[-1] for s in stops}
    flags = bytearray(b"\x01") * max(vocab_size, len(texts))
    if " " in ends:
        return bytes(flags)
    if not all(c.isascii() for c in ends):
        ends.add(REPLACEMENT)
    for i, text in enumerate(texts):
        if not any(c in text for c in ends):
            flags[i] = 0
    return bytes(flags)

"""Incremental detokenization: the text new tokens add, for matching stop strings as tokens
arrive. Each sequence keeps a `tokenizers` DecodeStream (Rust), which decodes a new token against
the few before it, so a call costs the same however long the output is (vLLM's fast incremental
detokenizer does the same). Text ending in an incomplete UTF-8 sequence is held back until its
bytes complete.

Most tokens cannot complete a stop string, and need not be decoded when they arrive: a match
that ends in a token's text holds the stop string's last character, and with the decoders that
checkpoints use (byte-level, byte-fallback, Metaspace, WordPiece; `_SAFE`) a token adds, when no
bytes are held back, only characters its own text has (or U+FFFD), plus spaces some decoders put
between tokens (`stop_triggers`). The others wait, undecoded, until a token that might complete a
match arrives; `step` then decodes them all, so the text matched is the same, and a match is found
at the same token, as if every token had been decoded on arrival. Any other decoder (one that
strips or replaces across tokens) wakes the detokenizer at every token.
"""
from __future__ import annotations

import json

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
        self._last: int | None = None    # the last token the stream took
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
            out = self._stream.step(self._backend, token)
        except Exception as e:
            # The stream's window no longer decodes to the text it gave (a byte-fallback run that
            # turned out invalid shows as U+FFFD, one per byte): the text given stands (it may
            # differ there from decoding the whole output), and the stream starts again from the
            # token before this one, so that this token's leading space is kept.
            if "Invalid prefix" not in str(e):
                raise
            out = self._restart(token)
        self._last = token
        return out

    def _restart(self, token: int) -> str | None:
        if self._last is not None:
            try:
                self._stream = DecodeStream(ids=[self._last], skip_special_tokens=self._skip)
                return self._stream.step(self._backend, token)
            except Exception:      # (a tokenizers without `ids=`, or the same failure again)
                pass
        self._stream = DecodeStream(skip_special_tokens=self._skip)
        return self._stream.step(self._backend, token)


def token_texts(tokenizer, skip_special_tokens: bool) -> list[str]:
    """Each token id's text, decoded alone (one batched call into the Rust tokenizer)."""
    backend = tokenizer.backend_tokenizer
    n = backend.get_vocab_size(with_added_tokens=True)
    return backend.decode_batch([[i] for i in range(n)], skip_special_tokens=skip_special_tokens)


# Decoders whose output for a token, in context, is that token's own text, U+FFFD for bytes that
# form no character, or spaces (added between tokens or stripped from the start). Strip and
# Replace qualify only as checkpoints use them: a leading space stripped, a one-character pattern.
_SAFE = {"ByteLevel", "ByteFallback", "Fuse", "Metaspace", "WordPiece", "BPEDecoder", "CTC"}


def _decoder_is_safe(decoder: dict | None) -> bool:
    if decoder is None:                  # (tokens joined by spaces)
        return True
    kind = decoder.get("type")
    if kind == "Sequence":
        return all(_decoder_is_safe(d) for d in decoder.get("decoders", []))
    if kind == "Strip":
        return decoder.get("content") == " "
    if kind == "Replace":
        return len(decoder.get("pattern", {}).get("String", "")) == 1
    return kind in _SAFE


def decoder_is_safe(tokenizer) -> bool:
    """Whether `stop_triggers` may skip tokens with this tokenizer's decoder."""
    return _decoder_is_safe(json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder"))


def stop_triggers(texts: list[str], stops: list[str], vocab_size: int) -> bytes:
    """Per token id, 1 if its arrival may complete a match of one of `stops`: its text (decoded
    alone) holds a stop's last character; or, for a last character outside ASCII, its text holds
    bytes of an unfinished character, which may complete into that one. (An ASCII character is
    one byte, never part of another character's, and shows in the token's text even when other
    bytes of it are unfinished.) Ids at or beyond the tokenizer's vocabulary size are always 1,
    and all are for a stop ending in a space, which decoders add between tokens (Metaspace,
    WordPiece) rather than take from one token. texts: `token_texts`, or [] for a decoder that is
    not `decoder_is_safe` (then every id is 1)."""
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

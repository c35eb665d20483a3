"""What happens to a sampled token on the host: it joins its sequence (with its logprobs and the
counts penalties need), the stop rules are checked (stop tokens, EOS, stop strings on the
incrementally detokenized text, max_tokens, the context), and a finished sequence gets its text.
"""
from __future__ import annotations

import warnings

from tts_engine.engine.detokenizer import IncrementalDetokenizer, decoder_is_safe, stop_triggers, token_texts
from tts_engine.engine.sampler import SampledRow
from tts_engine.engine.sequence import Sequence, Status


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: set[int], max_model_len: int, vocab_size: int):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self._texts: dict[bool, list[str]] = {}            # skip_special_tokens -> token texts
        # (stops' last characters, skip) -> stop_triggers; a study uses a handful of stop sets
        self._triggers: dict[tuple[frozenset[str], bool], bytes] = {}
        self._skippable = decoder_is_safe(tokenizer)

    def append_all(self, seqs: list[Sequence], rows: list[SampledRow]) -> tuple[list[Sequence], int]:
        """Add each sampled token to its sequence; return the sequences it finished and how many
        tokens joined. A sequence that finished since the step was scheduled (the overlapped
        loop) takes nothing: its row is void. (One pass, the sequence's attributes read once:
        this runs for every sequence at every step.)"""
        finished, eos, max_len, appended = [], self.eos_token_ids, self.max_model_len, 0
        for seq, row in zip(seqs, rows):
            seq.in_flight -= 1
            if seq.status is Status.FINISHED:
                continue
            if not row.finite:
                warnings.warn(f"non-finite logits for request {seq.request_id} at position {len(seq)}; "
                              f"took their argmax (token {row.token})", RuntimeWarning)
            appended += 1
            p, token, ids = seq.params, row.token, seq.token_ids
            ids.append(token)
            seq.cumulative_logprob += row.logprob
            if seq.logprobs is not None:
                seq.logprobs.append(row.top)
            if p.presence_penalty or p.frequency_penalty:
                seq.output_counts[token] = seq.output_counts.get(token, 0) + 1
            generated = len(ids) - seq.num_prompt_tokens
            may_stop = generated >= p.min_tokens   # (before that, EOS and stop tokens are banned)
            if may_stop and token in p.stop_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", token
            elif may_stop and not p.ignore_eos and token in eos:
                seq.finish_reason = "stop"
            elif p.stop:
                det = seq.detokenizer or self._detokenizer(seq)
                if det.holding or det.triggers[token]:   # (else the token cannot complete a stop)
                    self._match_stop_strings(seq, det.step(ids))
            if seq.finish_reason is None and seq.is_full(max_len):
                seq.finish_reason = "length"
            if seq.finish_reason is not None:
                finished.append(seq)
        return finished, appended

    def _detokenizer(self, seq: Sequence) -> IncrementalDetokenizer:
        p, skip = seq.params, seq.params.skip_special_tokens
        key = (frozenset(s[-1] for s in p.stop), skip)
        if key not in self._triggers:
            if len(self._triggers) >= 64:       # (bounded: many distinct stop sets evict the oldest)
                del self._triggers[next(iter(self._triggers))]
            if skip not in self._texts:
                self._texts[skip] = token_texts(self.tokenizer, skip) if self._skippable else []
            self._triggers[key] = stop_triggers(self._texts[skip], p.stop, self.vocab_size)
        seq.detokenizer = IncrementalDetokenizer(self.tokenizer, seq.num_prompt_tokens, skip,
                                                 self._triggers[key])
        return seq.detokenizer

    @staticmethod
    def _match_stop_strings(seq: Sequence, new: str) -> None:
        """Stop strings are matched on the text, so a stop made of several tokens (or inside one)
        is found. The text grows by incremental detokenization; only its new tail can hold a new
        match (and none is looked for before min_tokens). The tail may be several tokens' text,
        but only the newest token's can complete a match (detokenizer.py). The matched stop
        string stays in the text only with include_stop_str_in_output."""
        p = seq.params
        if not new:
            return
        start = len(seq.text)
        seq.text += new
        if seq.num_output_tokens < p.min_tokens:
            return
        best = None
        for stop in p.stop:
            i = seq.text.find(stop, max(0, start - len(stop) + 1))
            if i >= 0 and (best is None or i < best[0]):
                best = (i, stop)
        if best is not None:
            i, stop = best
            seq.text = seq.text[:i + len(stop)] if p.include_stop_str_in_output else seq.text[:i]
            seq.finish_reason, seq.stop_reason = "stop", stop

    def finish_text(self, seq: Sequence) -> None:
        """The whole output's text (a stop string's match already cut it)."""
        if seq.generates and seq.params.detokenize and not isinstance(seq.stop_reason, str):
            seq.text = self.tokenizer.decode(seq.output_token_ids, seq.params.skip_special_tokens)

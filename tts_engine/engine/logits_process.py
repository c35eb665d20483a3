"""Per-request changes to the logits before sampling, as vLLM makes them: the repetition penalty
(logits of tokens in the prompt or the output divided by p when positive, multiplied by p when not),
then the frequency and presence penalties (subtracted per generated occurrence, and once per
generated token), and before `min_tokens` no EOS and no stop token. Only rows that need any of
this are touched, and logprobs stay those of the raw logits (the caller keeps them).

The lists come from the sequences' host state (`lists`, while a step is prepared), the changes
are made on the device (`apply`, while it runs).
"""
from __future__ import annotations

import torch

from tts_engine.engine.sequence import Sequence
from tts_engine.engine.upload import upload


def needs_processing(seq: Sequence) -> bool:
    min_tokens = seq.params.min_tokens
    return seq.penalized or (min_tokens > 0 and seq.num_output_tokens < min_tokens)


def lists(seqs: list[Sequence], eos_token_ids: set[int]) -> tuple[list, ...]:
    """What `apply` changes in the logits rows of seqs: (rows, tokens, factors) of the repetition
    penalty, (rows, tokens, deltas) of the frequency and presence penalties, (rows, tokens) banned."""
    rep_rows, rep_tokens, rep_factor = [], [], []
    add_rows, add_tokens, add_delta = [], [], []
    ban_rows, ban_tokens = [], []
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.repetition_penalty != 1:
            seen = set(seq.token_ids)
            rep_rows += [row] * len(seen)
            rep_tokens += seen
            rep_factor += [p.repetition_penalty] * len(seen)
        if p.presence_penalty or p.frequency_penalty:
            for token, count in seq.output_counts.items():
                add_rows.append(row)
                add_tokens.append(token)
                add_delta.append(-(p.presence_penalty + p.frequency_penalty * count))
        if seq.num_output_tokens < p.min_tokens:
            banned = set(p.stop_token_ids) | (set() if p.ignore_eos else eos_token_ids)
            ban_rows += [row] * len(banned)
            ban_tokens += banned
    return rep_rows, rep_tokens, rep_factor, add_rows, add_tokens, add_delta, ban_rows, ban_tokens


def apply(logits: torch.Tensor, changes: tuple[list, ...]) -> torch.Tensor:
    """A copy of logits with the changes (`lists`) made."""
    rep_rows, rep_tokens, rep_factor, add_rows, add_tokens, add_delta, ban_rows, ban_tokens = changes
    out = logits.clone()
    dev = logits.device
    rows, tokens, a_rows, a_tokens, b_rows, b_tokens = upload(dev, rep_rows, rep_tokens, add_rows, add_tokens,
                                                              ban_rows, ban_tokens)
    factor, delta = upload(dev, rep_factor, add_delta, dtype=torch.float32)
    if rep_rows:
        values = out[rows, tokens]
        out[rows, tokens] = torch.where(values > 0, values / factor, values * factor)
    if add_rows:
        out.index_put_((a_rows, a_tokens), delta, accumulate=True)
    if ban_rows:
        out[b_rows, b_tokens] = float("-inf")
    return out

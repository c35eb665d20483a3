"""Logprobs as vLLM reports them, for sampled and for prompt tokens alike: each chosen token's
log-probability and rank (1 = the most likely) under the model's raw distribution, and the k most
likely tokens with theirs, as {token: (logprob, rank)} with the chosen token first."""
from __future__ import annotations

import torch

from tts_engine.engine.upload import upload_one

PROMPT_CHUNK = 512      # prompt positions through the head at a time (a [chunk, vocab] float32 block)


def ranked(logits: torch.Tensor, chosen: torch.Tensor, lse: torch.Tensor, k: int) -> list[torch.Tensor]:
    """For rows of raw logits [m, vocab], their chosen tokens [m] and log-sum-exps [m]: the rank of
    each chosen token [m], and with k > 0 the top k ids and logprobs [m, k]. All float64, ready for
    one copy to the host with the step's other numbers."""
    picked = logits.gather(1, chosen[:, None])
    out = [((logits > picked).sum(-1) + 1).double()]
    if k:
        values, ids = logits.topk(k, dim=-1)
        out += [ids.double(), (values - lse[:, None]).double()]
    return out


def entry(token: int, logprob: float, rank: int, top_ids, top_values) -> dict[int, tuple[float, int]]:
    """{token: (logprob, rank)}: the chosen token first, then the top ones (ranks 1, 2, ...)."""
    out = {token: (logprob, rank)}
    for r, (t, v) in enumerate(zip(top_ids, top_values)):
        out.setdefault(int(t), (v, r + 1))
    return out


@torch.inference_mode()
def prompt_logprobs(model, hidden_states: dict[int, torch.Tensor], ids: list[int], k: int
                    ) -> list[dict[int, tuple[float, int]] | None]:
    """Per prompt token, its entry under the model given the tokens before it (None for the first),
    from the final hidden states of positions 0..len(ids)-2, through the head in chunks."""
    out: list[dict[int, tuple[float, int]] | None] = [None]
    for lo in range(0, len(ids) - 1, PROMPT_CHUNK):
        hi = min(lo + PROMPT_CHUNK, len(ids) - 1)
        logits = model.compute_logits(torch.stack([hidden_states[p] for p in range(lo, hi)]))
        lse = torch.logsumexp(logits, -1)
        nxt = upload_one(logits.device, ids[lo + 1:hi + 1])
        chosen = (logits.gather(1, nxt[:, None])[:, 0] - lse).double()
        rows = torch.cat([chosen[:, None]] + [c.reshape(hi - lo, -1) for c in ranked(logits, nxt, lse, k)], 1)
        for j, row in enumerate(rows.tolist()):
            out.append(entry(ids[lo + 1 + j], row[0], int(row[1]), row[2:2 + k], row[2 + k:]))
    return out

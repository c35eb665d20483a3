"""Sampling from a batch of logits, one row per sequence, each row with its own parameters.

Order (as in vLLM): temperature, then top-k, then top-p, then a draw from each row's own
generator (so a sample's tokens do not depend on what else is in the batch). Logprobs are those
of the model's raw distribution (before temperature and truncation), like vLLM's default.
"""
from __future__ import annotations

import torch

from tts_engine.engine.sequence import Sequence


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k and top-p nucleus. top_k == 0 means off."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    drop = ranks >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
    mass_before = probs.cumsum(dim=-1) - probs
    drop = mass_before >= top_p[:, None]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], torch.Tensor]:
    """logits: [batch, vocab] float32. Returns the chosen token ids and the raw log-softmax."""
    logprobs = torch.log_softmax(logits, dim=-1)
    greedy = [s.params.greedy for s in seqs]
    tokens = logits.argmax(dim=-1)
    if not all(greedy):
        temps = torch.tensor([s.params.temperature if not g else 1.0 for s, g in zip(seqs, greedy)],
                             device=logits.device)
        scaled = logits / temps[:, None]
        top_k = torch.tensor([s.params.top_k for s in seqs], device=logits.device)
        top_p = torch.tensor([s.params.top_p for s in seqs], device=logits.device, dtype=torch.float32)
        if bool((top_k > 0).any() or (top_p < 1).any()):
            scaled = apply_top_k_top_p(scaled, top_k, top_p)
        probs = scaled.softmax(dim=-1).cpu()
        for i, (seq, g) in enumerate(zip(seqs, greedy)):
            if not g:
                # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws token i with probability p_i.
                noise = torch.empty_like(probs[i]).exponential_(generator=seq.generator)
                tokens[i] = (probs[i] / noise).argmax()
    return tokens.tolist(), logprobs

"""Sampling from a batch of logits, one row per sequence, each row with its own parameters.

Order (as in vLLM): temperature, then top-k, then top-p, then a draw from each row's own
generator (so a sample's tokens do not depend on what else is in the batch). Logprobs are those
of the model's raw distribution (before temperature and truncation), like vLLM's default.

Speed: a full sort of a 50k vocabulary costs ~2 ms a row on a CPU, so truncation works on the
top-256 candidates and falls back to a full sort only for rows whose nucleus is wider. Draws are
inverse-CDF with one uniform per row (exact, and cheap with per-row generators).
"""
from __future__ import annotations

import torch

from tts_engine.engine.sequence import Sequence

try:   # optional CUDA kernel (csrc/sampling.cu): top-k / top-p without sorting the vocabulary
    from tts_engine import _C
except ImportError:
    _C = None

_CANDIDATES = 256


def truncated_candidates(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate probs with dropped ones set to 0, their token ids), both sorted by probability.
    top_k == 0 means no top-k; top_p == 1 means no top-p."""
    vocab = probs.shape[-1]
    k = min(vocab, max(_CANDIDATES, int(top_k.max())))
    cand_p, cand_ids = probs.topk(k, dim=-1)
    too_narrow = (top_p < 1) & (cand_p.sum(-1) < top_p) & ((top_k == 0) | (top_k > k))
    if k < vocab and bool(too_narrow.any()):
        k = vocab
        cand_p, cand_ids = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(k, device=probs.device)[None, :]
    drop = (top_k[:, None] > 0) & (ranks >= top_k[:, None])
    cand_p = cand_p.masked_fill(drop, 0.0)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
    # top-p applies to the distribution after top-k: renormalise over the top-k set, or over the
    # whole vocabulary (not just the candidates) when there is no top-k
    total = torch.where(top_k > 0, cand_p.sum(-1), probs.sum(-1))
    mass_before = (cand_p.cumsum(-1) - cand_p) / total[:, None]
    drop = mass_before >= top_p[:, None]
    drop[:, 0] = False
    return cand_p.masked_fill(drop, 0.0), cand_ids


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One index per row with probability proportional to the row's (unnormalised) weights."""
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return idx.clamp_(max=probs.shape[-1] - 1)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], torch.Tensor]:
    """logits: [batch, vocab] float32. Returns the chosen token ids and the raw log-softmax."""
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if not rows:
        return tokens.tolist(), logprobs
    params = [seqs[i].params for i in rows]
    gens = [seqs[i].generator for i in rows]
    temps = torch.tensor([p.temperature for p in params])
    top_k = torch.tensor([p.top_k for p in params])
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
    if _C is not None and logits.is_cuda:
        # Same distribution as below, on the GPU without a sort; the draw walks the kept tokens in
        # index order instead of sorted order, so a seed gives other (equally likely) tokens than
        # on the CPU. Uniforms still come from each row's own generator.
        dev = logits.device
        u = torch.cat([torch.rand(1, generator=g) for g in gens])
        picked = _C.top_k_top_p_sample(logits[rows].float(), temps.float().to(dev), top_k.to(torch.int32).to(dev),
                                       top_p.to(dev), u.to(dev))
        tokens[rows] = picked
        return tokens.tolist(), logprobs
    probs = (logits[rows].cpu() / temps[:, None]).softmax(dim=-1)
    truncated = (top_k > 0) | (top_p < 1)
    chosen = torch.empty(len(rows), dtype=torch.long)
    full = (~truncated).nonzero()[:, 0].tolist()
    if full:
        chosen[full] = draw(probs[full], [gens[j] for j in full])
    part = truncated.nonzero()[:, 0].tolist()
    if part:
        cand_p, cand_ids = truncated_candidates(probs[part], top_k[part], top_p[part])
        picks = draw(cand_p, [gens[j] for j in part])
        chosen[part] = cand_ids.gather(1, picks[:, None])[:, 0]
    tokens[rows] = chosen.to(tokens.device)
    return tokens.tolist(), logprobs

"""Sampling from a batch of logits, one row per sequence, each row with its own parameters.

Order (as in vLLM): temperature, then top-k, then top-p, then a draw with the row's own uniform
(from the sequence's private generator, so a sample's tokens do not depend on what else is in the
batch). Logprobs are those of the model's raw distribution (before temperature and truncation),
like vLLM's default.

Cost: a few float32 passes over the vocabulary, into a reused workspace. Every row: a max (the
shift for exp), an exp and a sum (the raw log-sum-exp); greedy rows an argmax. Sampling rows add
a tempered exp (when T != 1) and a block sum. An untruncated draw is an inverse CDF in two
levels, over the sums of blocks of 1024 tokens and then inside the chosen block: exact, in
token-id order, with no cumulative sum over the vocabulary. Truncated rows (top-k / top-p) work
on their top-256 candidates and fall back to a full sort only for rows whose nucleus is wider.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tts_engine.sampling_params import SamplingParams

try:   # optional CUDA kernel (csrc/sampling.cu): top-k / top-p without sorting the vocabulary
    from tts_engine import _C
except ImportError:
    _C = None

CANDIDATES = 256
BLOCK = 1024


@dataclass
class Sampled:
    tokens: torch.Tensor      # [rows] int64
    logprobs: torch.Tensor    # [rows] float32: the raw log-probability of each chosen token
    lse: torch.Tensor         # [rows] float32: log-sum-exp of each row's raw logits


class Sampler:
    """Samples a batch of rows. Keeps one float32 workspace of the largest batch seen: on the CPU a
    fresh vocabulary-sized tensor per step costs more in page faults than the arithmetic on it."""

    def __init__(self):
        self._work: torch.Tensor | None = None

    def _workspace(self, logits: torch.Tensor) -> torch.Tensor:
        rows, vocab = logits.shape
        w = self._work
        if w is None or w.shape[0] < rows or w.shape[1] != vocab or w.device != logits.device:
            w = self._work = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
        return w[:rows]

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams], uniforms: list[float]) -> Sampled:
        """logits: [rows, vocab] float32; uniforms: one in [0, 1) per row (greedy rows ignore theirs)."""
        greedy = [i for i, p in enumerate(params) if p.greedy]
        rows = [i for i, p in enumerate(params) if not p.greedy]
        peak = logits.amax(dim=-1)
        if not rows:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = torch.empty(len(params), dtype=torch.long, device=logits.device)
            if greedy:
                tokens[greedy] = _rows(logits, greedy).argmax(dim=-1)
        w = self._workspace(logits)
        lse = peak + torch.sub(logits, peak[:, None], out=w).exp_().sum(-1).log()   # raw log-sum-exp
        if rows:
            if any(params[i].temperature != 1 for i in rows):   # w = exp((logits - peak) / T) instead
                inv_t = torch.tensor([1 / p.temperature if not p.greedy else 1.0 for p in params],
                                     dtype=torch.float32, device=logits.device)
                torch.sub(logits, peak[:, None], out=w).mul_(inv_t[:, None]).exp_()
            tokens[rows] = _draw(logits, w, rows, params, uniforms)
        logprobs = logits.gather(1, tokens[:, None])[:, 0] - lse
        return Sampled(tokens, logprobs, lse)


def _draw(logits: torch.Tensor, weights: torch.Tensor, rows: list[int], params: list[SamplingParams],
          uniforms: list[float]) -> torch.Tensor:
    """Token ids for the sampling rows, from their tempered weights."""
    sub = [params[i] for i in rows]
    dev = logits.device
    top_k = torch.tensor([p.top_k for p in sub], device=dev)
    top_p = torch.tensor([p.top_p for p in sub], dtype=torch.float32, device=dev)
    u = torch.tensor([uniforms[i] for i in rows], dtype=torch.float64, device=dev)
    if _C is not None and logits.is_cuda:
        # Same distribution, on the GPU without a sort; like the blocked draw below it walks the
        # kept tokens in index order.
        temps = torch.tensor([p.temperature for p in sub], dtype=torch.float32, device=dev)
        return _C.top_k_top_p_sample(
            _rows(logits, rows).float(), temps, top_k.to(torch.int32), top_p, u.float()
        )
    w = _rows(weights, rows)
    out = torch.empty(len(rows), dtype=torch.long, device=dev)
    cut = [j for j, p in enumerate(sub) if p.top_k > 0 or p.top_p < 1]
    whole = [j for j, p in enumerate(sub) if not (p.top_k > 0 or p.top_p < 1)]
    if whole:
        out[whole] = _draw_blocked(_rows(w, whole), u[whole])
    if cut:
        k = max(CANDIDATES, max(sub[j].top_k for j in cut))
        cand_w, cand_ids = truncated_candidates(_rows(w, cut), top_k[cut], top_p[cut], k)
        picks = _search(cand_w, u[cut] * cand_w.double().sum(-1))
        out[cut] = cand_ids.gather(1, picks[:, None])[:, 0]
    return out


def _rows(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    # a subset of rows is a copy; all of them is the tensor itself
    return t if len(rows) == t.shape[0] else t[rows]


def _search(weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the index where the running sum of weights first exceeds target (an inverse CDF),
    never past the last positive weight (rounding at the top end)."""
    cdf = weights.double().cumsum(-1)
    idx = torch.searchsorted(cdf, target[:, None], right=True)[:, 0]
    return torch.minimum(idx, (cdf < cdf[:, -1:]).sum(-1))


def _draw_blocked(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row with probability proportional to w ([rows, vocab], unnormalised): pick a
    block by its sum, then a token inside it."""
    n, vocab = w.shape
    full = vocab // BLOCK * BLOCK
    sums = w[:, :full].reshape(n, -1, BLOCK).sum(-1)
    if full < vocab:
        sums = torch.cat([sums, w[:, full:].sum(-1, keepdim=True)], dim=1)
    sums = sums.double()
    cdf = sums.cumsum(-1)
    target = u * cdf[:, -1]
    block = _search(sums, target)
    before = cdf.gather(1, block[:, None])[:, 0] - sums.gather(1, block[:, None])[:, 0]
    cols = block[:, None] * BLOCK + torch.arange(BLOCK, device=w.device)
    inside = w.gather(1, cols.clamp(max=vocab - 1)).masked_fill(cols >= vocab, 0.0)
    return cols.gather(1, _search(inside, target - before)[:, None])[:, 0]


def truncated_candidates(weights: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, k: int = CANDIDATES
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate weights with dropped ones set to 0, their token ids), both sorted by weight, for
    unnormalised weights [rows, vocab] and k >= every top_k. top_k == 0 means no top-k; top_p == 1
    means no top-p."""
    vocab = weights.shape[-1]
    k = min(vocab, k)
    total = weights.sum(-1)
    cand, ids = weights.topk(k, dim=-1)
    too_narrow = (top_p < 1) & (cand.sum(-1) < top_p * total) & ((top_k == 0) | (top_k > k))
    if k < vocab and bool(too_narrow.any()):
        k = vocab
        cand, ids = weights.sort(dim=-1, descending=True)
    ranks = torch.arange(k, device=weights.device)[None, :]
    cand = cand.masked_fill((top_k[:, None] > 0) & (ranks >= top_k[:, None]), 0.0)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already
    # does. top-p applies to the distribution after top-k: normalise over the top-k set, or over the
    # whole vocabulary (not just the candidates) when there is no top-k.
    kept_total = torch.where(top_k > 0, cand.sum(-1), total)
    drop = (cand.cumsum(-1) - cand) / kept_total[:, None] >= top_p[:, None]
    drop[:, 0] = False
    return cand.masked_fill(drop, 0.0), ids

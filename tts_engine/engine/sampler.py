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

import math
from dataclasses import dataclass

import torch

from tts_engine.engine.logprobs import entry, ranked
from tts_engine.engine.upload import upload, upload_one
from tts_engine.sampling_params import SamplingParams

try:   # optional CUDA kernel (csrc/sampling.cu): top-k / top-p without sorting the vocabulary
    from tts_engine import _C
except ImportError:
    _C = None

CANDIDATES = 256
BLOCK = 1024


@dataclass
class SampledRow:
    """One row's result on the host."""
    token: int
    logprob: float            # raw log-probability of the token
    finite: bool              # False: the row's logits held NaN or infinities (token: `fallback`)
    top: dict[int, tuple[float, int]] | None    # {token: (logprob, rank)}, chosen first, if asked


@dataclass
class Sampled:
    tokens: torch.Tensor      # [rows] int64
    logprobs: torch.Tensor    # [rows] float32: the raw log-probability of each chosen token
    lse: torch.Tensor         # [rows] float32: log-sum-exp of each row's raw logits

    def fetch(self, raw: torch.Tensor, top: list[int | None]) -> list[SampledRow]:
        """The rows on the host, in the step's one device-to-host copy. top[i]: how many most
        likely tokens row i reports with its rank (None: no logprobs asked for it)."""
        asked = [i for i, k in enumerate(top) if k is not None]
        k = max((top[i] for i in asked), default=0)
        parts = [self.tokens.double(), self.logprobs.double(), self.lse.double()]
        if asked:
            index = upload_one(raw.device, asked)
            picked = [t.index_select(0, index) for t in (raw, self.tokens, self.lse)]
            parts += [p.flatten() for p in ranked(*picked, k)]
        flat = torch.cat(parts).tolist()
        n, m = len(top), len(asked)
        rows = [SampledRow(int(flat[i]), flat[n + i], math.isfinite(flat[2 * n + i]), None) for i in range(n)]
        ranks, ids = flat[3 * n:3 * n + m], flat[3 * n + m:3 * n + m + m * k]
        values = flat[3 * n + m + m * k:]
        for j, i in enumerate(asked):
            r, want, at = rows[i], top[i], j * k
            r.top = entry(r.token, r.logprob, int(ranks[j]), ids[at:at + want], values[at:at + want])
        for i, r in enumerate(rows):
            if not r.finite:     # NaN or infinite logits: never a wild token id
                r.token, r.logprob = Sampler.fallback(raw[i]), float("nan")
        return rows


class Sampler:
    """Samples a batch of rows. Keeps one float32 workspace of the largest batch seen: on the CPU a
    fresh vocabulary-sized tensor per step costs more in page faults than the arithmetic on it.
    Nothing here waits for the device: per-row parameters and row indices go up in non-blocking
    copies (upload.py), and the caller fetches tokens and logprobs in its one copy back. (The
    top-k / top-p torch path checks on the host whether a nucleus outgrows its candidates; on
    CUDA the compiled kernel, csrc/sampling.cu, handles those rows instead.)"""

    def __init__(self):
        self._work: torch.Tensor | None = None

    def _workspace(self, logits: torch.Tensor) -> torch.Tensor:
        rows, vocab = logits.shape
        w = self._work
        if w is None or w.shape[0] < rows or w.shape[1] != vocab or w.device != logits.device:
            w = self._work = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
        return w[:rows]

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams], uniforms: list[float],
                 raw: torch.Tensor | None = None) -> Sampled:
        """logits: [rows, vocab] float32 to sample from; raw: the model's logits before any
        penalties, which the logprobs describe (default: logits); uniforms: one in [0, 1) per row
        (greedy rows ignore theirs). A row whose raw logits hold NaN or infinities has a non-finite
        `lse`; its token is some valid id, and the caller replaces it (`fallback`)."""
        dev, n = logits.device, len(params)
        raw = logits if raw is None else raw
        greedy = [i for i, p in enumerate(params) if p.greedy]
        rows = [i for i, p in enumerate(params) if not p.greedy]
        peak = raw.amax(dim=-1)
        w = self._workspace(logits)
        lse = peak + torch.sub(raw, peak[:, None], out=w).exp_().sum(-1).log()   # raw log-sum-exp
        if not rows:
            tokens = logits.argmax(dim=-1)
        else:
            sub = [params[i] for i in rows]
            cut = [j for j, p in enumerate(sub) if p.top_k > 0 or p.top_p < 1]
            whole = [j for j, p in enumerate(sub) if not (p.top_k > 0 or p.top_p < 1)]
            greedy_i, rows_i, cut_i, whole_i, top_k = upload(dev, greedy, rows, cut, whole,
                                                             [p.top_k for p in sub])
            inv_t, u, top_p, temps = upload(
                dev, [1.0 if p.greedy else 1 / p.temperature for p in params], [uniforms[i] for i in rows],
                [p.top_p for p in sub], [p.temperature for p in sub], dtype=torch.float64)
            tokens = torch.empty(n, dtype=torch.long, device=dev)
            if greedy:
                tokens.index_copy_(0, greedy_i, _take(logits, greedy_i).argmax(dim=-1))
            min_p = any(p.min_p > 0 for p in sub)
            if _C is not None and logits.is_cuda and not min_p:
                # Same distribution, on the GPU without a sort; like the blocked draw below it walks
                # the kept tokens in index order.
                drawn = _C.top_k_top_p_sample(_take(logits, rows_i).float(), temps.float(),
                                              top_k.to(torch.int32), top_p.float(), u.float())
            else:
                if raw is not logits:
                    peak = logits.amax(dim=-1)
                if raw is not logits or any(p.temperature != 1 for p in sub):   # w = exp((logits - peak) / T)
                    torch.sub(logits, peak[:, None], out=w).mul_(inv_t.float()[:, None]).exp_()
                if min_p:      # the most likely token has weight 1: drop those below min_p of it
                    min_ps = upload_one(dev, [p.min_p for p in params], torch.float32)
                    w.masked_fill_(w < min_ps[:, None], 0.0)
                drawn = _draw(_take(w, rows_i), u, top_k, top_p.float(), cut_i, whole_i,
                              max([sub[j].top_k for j in cut], default=0))
            tokens.index_copy_(0, rows_i, drawn)
        tokens.clamp_(0, logits.shape[1] - 1)    # (a NaN row can draw anything)
        logprobs = raw.gather(1, tokens[:, None])[:, 0] - lse
        return Sampled(tokens, logprobs, lse)

    @staticmethod
    def fallback(logits: torch.Tensor) -> int:
        """The token for a row of logits with NaN or infinities: the argmax with NaN as -inf (the
        first +inf, if any; token 0 for a row of NaN). Costs a sync; only broken rows come here."""
        return int(logits.nan_to_num(nan=float("-inf")).argmax())


def _draw(w: torch.Tensor, u: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, cut: torch.Tensor,
          whole: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """A token per row of tempered weights w; `cut` rows are truncated by top-k / top-p, `whole` rows
    are not."""
    out = torch.empty(w.shape[0], dtype=torch.long, device=w.device)
    if whole.numel():
        out.index_copy_(0, whole, _draw_blocked(_take(w, whole), _take(u, whole)))
    if cut.numel():
        cand_w, cand_ids = truncated_candidates(_take(w, cut), _take(top_k, cut), _take(top_p, cut),
                                                max(CANDIDATES, max_top_k))
        picks = _search(cand_w, _take(u, cut) * cand_w.double().sum(-1))
        out.index_copy_(0, cut, cand_ids.gather(1, picks[:, None])[:, 0])
    return out


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    # all rows: the tensor itself; a subset: a copy (an index is a device tensor: no host sync)
    return t if index.numel() == t.shape[0] else t.index_select(0, index)


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

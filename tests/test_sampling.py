"""Sampling: the draws follow the temperature / top-k / top-p distribution, seeds reproduce
tokens whatever else is in the batch, and logprobs are the model's."""
from __future__ import annotations

import math
import random

import pytest
import torch

from tts_engine import LLM, SamplingParams
from tts_engine.engine import sampler
from tts_engine.engine.sampler import Sampler


def ranked(logits: list[float], temperature: float, top_k: int) -> tuple[list[float], list[int], float]:
    """Unnormalised probabilities of softmax(l / T), the token ids by falling probability cut to
    the top k, and their total mass, in float64."""
    z = [l / temperature for l in logits]
    m = max(z)
    p = [math.exp(x - m) for x in z]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    if top_k > 0:
        order = order[:top_k]
    return p, order, sum(p[i] for i in order)


def expected_probs(logits: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """Hand-written reference: softmax(l / T), keep the top k, then the smallest nucleus reaching top_p."""
    p, order, total = ranked(logits, temperature, top_k)
    kept, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += p[i] / total
    norm = sum(p[i] for i in kept)
    return [p[i] / norm if i in kept else 0.0 for i in range(len(p))]


def mass_before(logits: list[float], top_k: int, token: int) -> float:
    """The probability mass (after top-k) of the tokens ranked above `token`, in float64."""
    p, order, total = ranked(logits, 1.0, top_k)
    return sum(p[i] for i in order[:order.index(token)]) / total


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 3, 1.0),
                                                      (1.0, 0, 0.8), (0.8, 4, 0.6)])
def test_sampling_distribution(temperature, top_k, top_p):
    vocab = 8
    logits = torch.randn(vocab) * 1.5
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    draws = 4000
    out = Sampler()(
        logits.expand(draws, vocab).clone(), [params] * draws, [random.random() for _ in range(draws)]
    )
    freq = torch.bincount(out.tokens, minlength=vocab).double() / draws
    ref = torch.tensor(expected_probs(logits.tolist(), temperature, top_k, top_p), dtype=torch.float64)
    assert (freq[ref == 0] == 0).all(), "a token outside top-k / top-p was drawn"
    # 5 standard errors per token
    tol = 5 * torch.sqrt(ref * (1 - ref) / draws) + 1e-9
    assert ((freq - ref).abs() <= tol).all(), (freq, ref)


def test_greedy_is_argmax_and_logprobs_are_raw():
    logits = torch.randn(4, 50) * 3
    params = [SamplingParams(temperature=0)] * 2 + [SamplingParams(temperature=0.5, top_p=0.7)] * 2
    out = Sampler()(logits.clone(), params, [0.3] * 4)
    assert out.tokens[:2].tolist() == logits[:2].argmax(-1).tolist()
    raw = torch.log_softmax(logits, -1)
    assert torch.allclose(out.logprobs, raw.gather(1, out.tokens[:, None])[:, 0], atol=1e-5)
    assert torch.allclose(out.lse, torch.logsumexp(logits, -1), atol=1e-5)


def test_blocked_draw_is_the_inverse_cdf_over_the_whole_vocabulary():
    """The two-level draw (block sums, then inside the block) picks exactly the token that a full
    cumulative sum in token order picks, for any uniform; the vocabulary ends in a partial block."""
    vocab = 3 * sampler.BLOCK + 371
    weights = torch.rand(64, vocab) ** 8            # uneven, some blocks far heavier than others
    u = torch.rand(64, dtype=torch.float64)
    cdf = weights.double().cumsum(-1)
    expected = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    assert torch.equal(sampler._draw_blocked(weights, u), expected)
    # the top end: u just below 1 never lands past the last token with weight
    weights[:, -500:] = 0
    assert (
        sampler._draw_blocked(weights, torch.full((64,), 1 - 1e-16, dtype=torch.float64)) < vocab - 500
    ).all()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampling_distribution_on_a_large_vocabulary(temperature):
    """Mass spread over tokens in different blocks (the last one partial), the rest nearly zero."""
    vocab = 2 * sampler.BLOCK + 100
    logits = torch.full((vocab,), -30.0)
    hot = torch.tensor([3, 1500, 1501, 2047, 2048, vocab - 1])
    logits[hot] = torch.randn(len(hot))
    draws = 4000
    out = Sampler()(logits.expand(draws, vocab).clone(), [SamplingParams(temperature=temperature)] * draws,
                 [random.random() for _ in range(draws)])
    freq = torch.bincount(out.tokens, minlength=vocab).double() / draws
    ref = torch.softmax(logits.double() / temperature, -1)
    assert ((freq - ref).abs() <= 5 * torch.sqrt(ref * (1 - ref) / draws) + 1e-9).all()


def test_seed_reproducible_regardless_of_batch(tiny_llama):
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=4096)
    p = {"prompt_token_ids": [5, 17, 99, 200, 31]}
    sp = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=30, seed=1234, ignore_eos=True)
    alone = [o.token_ids for o in llm.generate(p, sp)[0].outputs]
    others = [{"prompt_token_ids": [random.randrange(4, 384) for _ in range(random.randrange(3, 40))]}
              for _ in range(5)]
    batch = llm.generate(
        others[:2] + [p] + others[2:],
        [SamplingParams(n=2, temperature=1.0, max_tokens=25)] * 2 + [sp] + [SamplingParams()] * 3,
    )
    assert [o.token_ids for o in batch[2].outputs] == alone
    different = llm.generate(
        p, SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=30, seed=99, ignore_eos=True)
    )
    assert [o.token_ids for o in different[0].outputs] != alone
    assert len({tuple(t) for t in alone}) == 3     # the n samples differ from each other


def test_logprobs_as_vllm_gives_them(tiny_llama):
    """Per generated token {token_id: Logprob(logprob, rank, decoded_token)}: the chosen token and
    the top 3, raw log-softmax values, ranks counted from 1; prompt_logprobs likewise per prompt token
    (None for the first), all equal to what the model computes on the same text."""
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=4096)
    ids = [5, 17, 99, 200, 31]
    params = SamplingParams(temperature=0.9, max_tokens=6, logprobs=3, seed=0, ignore_eos=True,
                            prompt_logprobs=2)
    res = llm.generate({"prompt_token_ids": ids}, params)[0]
    out = res.outputs[0]
    assert len(out.logprobs) == 6
    chosen = [lp[t] for lp, t in zip(out.logprobs, out.token_ids)]
    assert out.cumulative_logprob == pytest.approx(sum(c.logprob for c in chosen), abs=1e-5)
    assert all(3 <= len(lp) <= 4 for lp in out.logprobs)
    every = ids + out.token_ids
    hidden = llm.encode([every], positions=[list(range(len(every) - 1))])[0]
    raw = torch.log_softmax(llm.engine.model.compute_logits(hidden), -1)
    tok = llm.get_tokenizer()
    for pos, entry in enumerate(out.logprobs, start=len(ids) - 1):
        top = raw[pos].topk(3)
        for t, lp in entry.items():
            assert lp.logprob == pytest.approx(raw[pos, t].item(), abs=1e-4)
            assert lp.rank == int((raw[pos] > raw[pos, t]).sum()) + 1
            assert lp.decoded_token == tok.decode([t])
        assert set(top.indices.tolist()) <= set(entry)
    assert res.prompt_logprobs[0] is None and len(res.prompt_logprobs) == len(ids)
    for pos, entry in enumerate(res.prompt_logprobs[1:]):
        assert ids[pos + 1] in entry and 1 <= len(entry) <= 3
        for t, lp in entry.items():
            assert lp.logprob == pytest.approx(raw[pos, t].item(), abs=1e-4)
            assert lp.rank == int((raw[pos] > raw[pos, t]).sum()) + 1


def test_penalties_and_min_p_change_the_distribution_as_vllm_defines_them(tiny_llama):
    """Checked on the logits the sampler sees: the engine's processing of a row against a hand
    computation of vLLM's formulas."""
    from tts_engine.engine.logits_process import apply, lists
    from tts_engine.engine.sequence import Sequence
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25,
                            min_tokens=5, stop_token_ids=[9])
    seq = Sequence(0, 0, 0, [4, 5, 6], params, 0, max_tokens=16)
    for t in (7, 7, 5):
        seq.token_ids.append(t)
        seq.output_counts[t] = seq.output_counts.get(t, 0) + 1
    logits = torch.randn(1, 20)
    logits[0, 5], logits[0, 6] = 2.0, -1.0
    out = apply(logits, lists([seq], eos_token_ids={1}))[0]
    expected = logits[0].clone()
    for t in {4, 5, 6, 7}:                                 # prompt and output tokens
        expected[t] = expected[t] / 1.3 if expected[t] > 0 else expected[t] * 1.3
    expected[7] -= 0.5 + 0.25 * 2                          # generated twice
    expected[5] -= 0.5 + 0.25 * 1
    expected[1] = expected[9] = float("-inf")              # EOS and the stop token, before min_tokens
    assert torch.allclose(out, expected)
    # min_p: with min_p = 0.5 only tokens with at least half the top probability can be drawn
    logits = torch.tensor([[3.0, 2.9, 2.0, 1.0] + [0.0] * 60])
    draws = Sampler()(logits.expand(500, 64).clone(), [SamplingParams(min_p=0.5)] * 500,
                      [random.random() for _ in range(500)])
    assert set(draws.tokens.tolist()) == {0, 1}


@pytest.mark.parametrize("flat", [False, True])
def test_truncation_keeps_exactly_the_nucleus_on_a_large_vocabulary(flat):
    """With 5,000 tokens the top-p set is found among the top-256 candidates when the distribution
    is peaked, and by a full sort when the nucleus is wider: both must keep exactly the right set."""
    vocab = 5000
    logits = torch.randn(4, vocab) * (0.3 if flat else 4.0)
    top_k = torch.tensor([0, 0, 40, 600])
    top_p = torch.tensor([0.9, 0.5, 0.95, 0.99])
    weights = (logits - logits.max(-1, keepdim=True).values).exp()     # unnormalised, as the sampler has them
    cand_p, cand_ids = sampler.truncated_candidates(weights, top_k, top_p, k=600)
    for r in range(4):
        kept = set(cand_ids[r][cand_p[r] > 0].tolist())
        ref = expected_probs(logits[r].tolist(), 1.0, int(top_k[r]), float(top_p[r]))
        differ = kept ^ {i for i, p in enumerate(ref) if p > 0}
        # float32 sums may only disagree on a token whose mass before it is top_p within rounding
        assert all(abs(mass_before(logits[r].tolist(), int(top_k[r]), i) - float(top_p[r])) < 1e-5
                   for i in differ), differ

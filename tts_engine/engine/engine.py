"""The engine: one loop that every front door (LLM, PRM) drives.

A step is schedule -> run (the model, then sampling) -> postprocess: siblings fork off a just
computed prompt, each sampling sequence appends its token and checks its stop conditions, kept
hidden states are stored, and finished sequences hand their K/V to the cache. The engine also
builds everything from an EngineConfig (device, dtype, tokenizer, model, KV pool) and keeps the
counters.
"""
from __future__ import annotations

import math
import random
import warnings
from typing import Callable

import torch

from tts_engine.config import EngineConfig
from tts_engine.engine.detokenizer import IncrementalDetokenizer
from tts_engine.engine.logits_process import needs_processing, process
from tts_engine.engine.memory import activation_bytes, kv_cache_tokens
from tts_engine.engine.runner import ModelRunner
from tts_engine.engine.sampler import Sampler
from tts_engine.engine.scheduler import ScheduledBatch, Scheduler
from tts_engine.engine.sequence import Request, Sequence
from tts_engine.engine.stats import EngineStats
from tts_engine.engine.upload import upload_one
from tts_engine.flops import forward_flops, lm_head_flops
from tts_engine.loader import find_checkpoint
from tts_engine.models.backend import resolve_backend
from tts_engine.models.registry import build_model, model_config
from tts_engine.sampling_params import SamplingParams
from tts_engine.tokenizer import Tokenizer

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}

_CPU_KV_BYTES = 1 << 30     # the KV pool on the CPU, unless kv_cache_tokens says otherwise


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device)
        ckpt = find_checkpoint(config.model)
        self.model_config = cfg = model_config(ckpt.config, ckpt.generation_config)
        self.dtype = resolve_dtype(config.dtype, cfg.torch_dtype, self.device)
        self.tokenizer = Tokenizer.load(ckpt, config.tokenizer)
        self.max_model_len = min(
            config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings
        )
        self.eos_token_ids = set(cfg.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)

        self.model = build_model(cfg, self.dtype, self.device, config.head)
        self.model.load_weights(ckpt.weights(), check_finite=config.check_weights)
        self.model.eval()
        self.attention_backend = resolve_backend(config.attention_backend, self.device)
        self.model.set_backend(self.attention_backend)

        self.kv_cache_tokens = config.kv_cache_tokens or self._default_kv_tokens()
        self.runner = ModelRunner(self.model, config, self.kv_cache_tokens, self.max_model_len)
        self.scheduler = Scheduler(config, self.kv_cache_tokens)
        if self.device.type == "cuda" and self.attention_backend == "triton" and not config.enforce_eager:
            try:
                self.runner.capture_decode_graphs(min(config.max_num_seqs, 256))
            except RuntimeError as e:   # a failed or inexact capture only costs speed
                warnings.warn(f"CUDA graphs disabled, decode runs eagerly: {e}")
                self.runner.graphs = None
        self.sampler = Sampler()
        self._rng = random.Random(config.seed)
        self._next_request = 0
        self._next_seq = 0
        self.reset_stats()

    def _default_kv_tokens(self) -> int:
        cfg, config = self.model_config, self.config
        itemsize = self.dtype.itemsize
        bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
        if self.device.type != "cuda":
            return _CPU_KV_BYTES // bytes_per_token
        free, total = torch.cuda.mem_get_info(self.device)
        tensors = [*self.model.parameters(), *self.model.buffers()]
        weights = sum(t.numel() * t.element_size() for t in tensors)
        activations = activation_bytes(cfg, itemsize, config.max_num_batched_tokens, config.max_num_seqs)
        share = config.gpu_memory_utilization
        tokens = kv_cache_tokens(total, free, share, weights, activations, bytes_per_token)
        if tokens < 2:
            gib = 1 << 30
            raise ValueError(
                f"no room for a KV cache: gpu_memory_utilization={share} of {total / gib:.1f} GiB, less "
                f"{weights / gib:.1f} GiB of weights and {activations / gib:.1f} GiB for activations, with "
                f"{free / gib:.1f} GiB free now. gpu_memory_utilization is this engine's share of the GPU: "
                f"two engines on one GPU need shares that sum to at most ~0.9 (say 0.45 each); or pass "
                f"kv_cache_tokens")
        return tokens

    @property
    def can_generate(self) -> bool:
        return self.model.head_name == "lm_head"

    # ------------------------------------------------------------ requests
    def make_request(self, prompt_token_ids: list[int], params: SamplingParams, prompt: str | None = None,
                     hidden_positions: list[int] | None = None, generates: bool = True) -> Request:
        """A request and its n sequences, checked against the model and the KV pool; not queued yet
        (callers check all of theirs before adding any). With prompt_logprobs the first sequence
        keeps the hidden states of every prompt position but the last (no cache hits for it)."""
        ids = prompt_token_ids
        if not ids:
            raise ValueError("prompt is empty (no tokens)")
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]!r} is outside the vocabulary [0, {vocab})")
        for name in ("logprobs", "prompt_logprobs"):
            if (getattr(params, name) or 0) > vocab:
                raise ValueError(f"{name}={getattr(params, name)} is larger than the vocabulary "
                                 f"({vocab} tokens)")
        bad = [t for t in params.stop_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"stop_token_ids: {bad[0]} is outside the vocabulary [0, {vocab})")
        if generates and len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but the model's context is {self.max_model_len} "
                             f"(no room to generate)")
        if len(ids) > self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but the model's context is {self.max_model_len}")
        max_tokens = params.max_tokens or self.max_model_len - len(ids)
        need = min(len(ids) + max_tokens, self.max_model_len) if generates else len(ids)
        if need > self.kv_cache_tokens:
            raise ValueError(f"a sequence needs up to {need} KV slots (prompt {len(ids)} + max_tokens "
                             f"{max_tokens}) but kv_cache_tokens={self.kv_cache_tokens}")
        if generates and params.prompt_logprobs is not None:
            hidden_positions = list(range(len(ids) - 1))
        request = Request(self._next_request, prompt, list(ids), params)
        self._next_request += 1
        for k in range(params.n):
            seed = params.seed + k if params.seed is not None else self._rng.getrandbits(63)
            keep = hidden_positions if k == 0 or not generates else None
            request.seqs.append(Sequence(self._next_seq, request.request_id, k, ids, params, seed,
                                         keep or None, generates, max_tokens))
            self._next_seq += 1
        return request

    def add(self, request: Request) -> None:
        self.scheduler.add(request.seqs)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def run(self, on_finished: Callable[[int], object] | None = None) -> None:
        """Step until every queued sequence is done; on_finished(k) after each step that finished k.
        Any exception (KeyboardInterrupt included) aborts all work and clears the cache, which may
        list slots whose K/V were never written, so the engine stays usable."""
        try:
            while self.scheduler.has_work():
                done = self.step()
                if on_finished is not None:
                    on_finished(done)
        except BaseException:
            self.scheduler.abort_all()
            raise

    # ------------------------------------------------------------ the step
    def step(self) -> int:
        """Run one step; return how many sequences finished."""
        batch = self.scheduler.schedule()
        self.stats.kv_tokens_peak = max(self.stats.kv_tokens_peak, self.scheduler.kv_tokens_in_use)
        logits, kept = self.runner.run(batch)
        sampling = batch.sampling
        self._count(batch, len(sampling))
        for (seq, pos), h in zip(batch.kept, kept if kept is not None else ()):
            seq.hidden_states[pos] = h
        finished = [c.seq for c in batch.prefill if not c.seq.generates and c.end == len(c.seq)]
        for seq in finished:
            seq.finish_reason = "encoded"
        # Siblings forked off a just-computed prompt sample from the same logits row.
        rows = list(range(len(sampling)))
        for i, seq in enumerate(list(sampling)):
            if seq.forks:
                forked = self.scheduler.fork(seq)
                self.runner.copy_rows(seq, forked)
                sampling += forked
                rows += [i] * len(forked)
        if sampling:
            if len(rows) > logits.shape[0]:
                logits = logits.index_select(0, upload_one(logits.device, rows))
            processed = None
            if any(needs_processing(s) for s in sampling):
                processed = process(logits, sampling, self.eos_token_ids)
            self._sample(logits, processed, sampling)
            finished += [s for s in sampling if s.finish_reason is not None]
        for seq in finished:
            self._finish(seq)
        return len(finished)

    def _count(self, batch: ScheduledBatch, head_rows: int) -> None:
        """FLOPs of the step, in all and per sequence (a request's work is its sequences'). A caller
        that applies the head to kept hidden states counts those FLOPs itself."""
        cfg, total = self.model_config, 0
        for seq in batch.decode:
            seq.flops += (f := forward_flops(cfg, [(seq.num_computed - 1, seq.num_computed)], 1))
            total += f
        for c in batch.prefill:
            c.seq.flops += (f := forward_flops(cfg, [(c.start, c.end)], int(c.samples)))
            c.seq.computed_tokens += c.end - c.start
            total += f
        self.stats.flops += total
        self.stats.steps += 1

    def _sample(self, logits: torch.Tensor, processed: torch.Tensor | None, seqs: list[Sequence]) -> None:
        """Draw each sequence's next token (from the processed logits, if any) and append it with the
        raw logprobs: the chosen token's, its rank and the requested top ones. They come back to the
        host in one copy."""
        uniforms = [0.0 if s.params.greedy else s.rng.random() for s in seqs]
        sampling_logits = logits if processed is None else processed
        out = self.sampler(sampling_logits, [s.params for s in seqs], uniforms, raw=logits)
        top_rows = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        parts = [out.tokens.double(), out.logprobs.double(), out.lse.double()]
        k = max((seqs[i].params.logprobs for i in top_rows), default=0)
        if top_rows:
            index = upload_one(logits.device, top_rows)
            rows = logits.index_select(0, index)
            chosen = rows.gather(1, out.tokens.index_select(0, index)[:, None])
            parts.append(((rows > chosen).sum(-1) + 1).double())     # rank of the chosen token
            if k:
                values, ids = rows.topk(k, dim=-1)
                logprobs = values - out.lse.index_select(0, index)[:, None]
                parts += [ids.double().flatten(), logprobs.double().flatten()]
        flat = torch.cat(parts).tolist()    # the step's one device-to-host copy
        n, m = len(seqs), len(top_rows)
        ranks, rest = flat[3 * n:3 * n + m], flat[3 * n + m:]
        ids, values = rest[:m * k], rest[m * k:]
        top = {}
        for j, i in enumerate(top_rows):
            want = seqs[i].params.logprobs
            top[i] = (int(ranks[j]), [(int(t), lp, r + 1) for r, (t, lp) in
                                      enumerate(zip(ids[j * k:j * k + want], values[j * k:j * k + want]))])
        for i, seq in enumerate(seqs):
            token, lp = int(flat[i]), flat[n + i]
            if not math.isfinite(flat[2 * n + i]):   # NaN or infinite logits: never a wild token id
                token, lp = self.sampler.fallback(logits[i]), float("nan")
                warnings.warn(f"non-finite logits for request {seq.request_id} at position {len(seq)}; "
                              f"took their argmax (token {token})", RuntimeWarning)
            self._append(seq, token, lp, top.get(i))

    def _append(self, seq: Sequence, token: int, lp: float, top: tuple[int, list] | None) -> None:
        p = seq.params
        seq.token_ids.append(token)
        self.stats.generated_tokens += 1
        seq.cumulative_logprob += lp
        if seq.logprobs is not None:
            rank, best = top
            entry = {token: (lp, rank)}
            entry.update((t, (v, r)) for t, v, r in best if t != token)
            seq.logprobs.append(entry)
        if p.presence_penalty or p.frequency_penalty:
            seq.output_counts[token] = seq.output_counts.get(token, 0) + 1
        may_stop = seq.num_output_tokens >= p.min_tokens   # (before that, EOS and stop tokens are banned)
        if may_stop and token in p.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token
        elif may_stop and not p.ignore_eos and token in self.eos_token_ids:
            seq.finish_reason = "stop"
        elif p.stop:
            self._check_stop_strings(seq, may_stop)
        full = seq.num_output_tokens >= seq.max_tokens or len(seq) >= self.max_model_len
        if seq.finish_reason is None and full:
            seq.finish_reason = "length"

    def _check_stop_strings(self, seq: Sequence, may_stop: bool) -> None:
        """Match stop strings on the text, so a stop made of several tokens (or inside one) is found.
        The text grows by incremental detokenization; only its new tail can hold a new match (and
        none is looked for before min_tokens). The matched stop string stays in the text only with
        include_stop_str_in_output."""
        p = seq.params
        if seq.detokenizer is None:
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, seq.num_prompt_tokens,
                                                     p.skip_special_tokens)
        new = seq.detokenizer.step(seq.token_ids)
        if not new:
            return
        start = len(seq.text)
        seq.text += new
        if not may_stop:
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

    def _finish(self, seq: Sequence) -> None:
        seq.saved_flops = forward_flops(self.model_config, [(0, seq.num_cached_prompt_tokens)], 0)
        if seq.generates and seq.params.detokenize and not isinstance(seq.stop_reason, str):
            seq.text = self.tokenizer.decode(seq.output_token_ids, seq.params.skip_special_tokens)
        self.scheduler.finish(seq)

    def prompt_logprobs(self, request: Request) -> list[dict[int, tuple[float, int]] | None]:
        """Per prompt token, {token: (logprob, rank)} under the model given the tokens before it, with
        the params.prompt_logprobs most likely ones too; None for the first token. From the hidden
        states the first sequence kept, through the head in chunks (its FLOPs are counted)."""
        seq, k = request.seqs[0], request.params.prompt_logprobs
        ids = request.prompt_token_ids
        out: list[dict[int, tuple[float, int]] | None] = [None]
        for lo in range(0, len(ids) - 1, 512):
            hi = min(lo + 512, len(ids) - 1)
            logits = self.model.compute_logits(torch.stack([seq.hidden_states[p] for p in range(lo, hi)]))
            lse = torch.logsumexp(logits, -1)
            nxt = upload_one(logits.device, ids[lo + 1:hi + 1])[:, None]
            chosen = logits.gather(1, nxt)
            cols = [chosen - lse[:, None], (logits > chosen).sum(-1, keepdim=True) + 1]
            if k:
                values, top = logits.topk(k, dim=-1)
                cols += [top, values - lse[:, None]]
            rows = torch.cat([c.double() for c in cols], 1)
            self.stats.flops += lm_head_flops(self.model_config, hi - lo)
            seq.flops += lm_head_flops(self.model_config, hi - lo)
            for j, row in enumerate(rows.double().tolist()):
                entry = {ids[lo + 1 + j]: (row[0], int(row[1]))}
                for r in range(k):
                    entry.setdefault(int(row[2 + r]), (row[2 + k + r], r + 1))
                out.append(entry)
        return out

    # ------------------------------------------------------------ cache and counters
    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (between requests, as vLLM's reset_prefix_cache)."""
        if self.scheduler.has_work():
            raise RuntimeError("reset_prefix_cache() while sequences are running")
        self.scheduler.cache.clear()

    def reset_stats(self) -> None:
        self.stats = self.scheduler.stats = EngineStats(kv_tokens_peak=self.scheduler.kv_tokens_in_use)


def resolve_device(device: str | None) -> torch.device:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but CUDA is not available (this torch: {torch.__version__})"
            )
        # Triton launches and CUDA graphs use the current device: make it ours (cuda:1 etc.).
        # (set_device needs an index: plain "cuda" means the current device.)
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        torch.cuda.set_device(dev)
    return dev


def resolve_dtype(dtype, config_dtype: str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # The checkpoint's dtype on GPUs; float32 on the CPU, where half-precision matmuls are slow.
        if device.type == "cpu" or config_dtype is None:
            return torch.float32
        dtype = config_dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]

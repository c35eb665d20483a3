"""LLM: the public offline API, a subset of vLLM's (`LLM(...).generate(prompts, SamplingParams)`)."""
from __future__ import annotations

import random
import warnings
from typing import Any

import torch
from tqdm import tqdm

from tts_engine.engine.runner import ModelRunner
from tts_engine.engine.sampler import sample
from tts_engine.engine.scheduler import Scheduler
from tts_engine.engine.sequence import Sequence
from tts_engine.flops import forward_flops
from tts_engine.loader import gguf_reader, find_checkpoint
from tts_engine.models.backend import resolve_backend
from tts_engine.models.llama import CausalLM
from tts_engine.outputs import CompletionOutput, RequestOutput
from tts_engine.sampling_params import SamplingParams
from tts_engine.tokenizer import Tokenizer

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}

# Default KV budget on the CPU (and the per-step activation headroom kept free on CUDA).
_CPU_KV_BYTES = 1 << 30
_CUDA_HEADROOM_BYTES = 2 << 30


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, dtype: str | torch.dtype = "auto",
                 device: str | None = None, kv_cache_tokens: int | None = None, seed: int = 0,
                 enable_prefix_caching: bool = True, max_num_batched_tokens: int = 2048,
                 max_num_seqs: int = 256, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, attention_backend: str = "auto",
                 enforce_eager: bool = False):
        if max_num_batched_tokens < 1 or max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available (this torch: {torch.__version__})")
        if self.device.type == "cuda":
            # Triton launches and CUDA graphs use the current device: make it ours (cuda:1 etc.).
            # (set_device needs an index: plain "cuda" means the current device.)
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            if self.device.index >= torch.cuda.device_count():
                raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
            torch.cuda.set_device(self.device)
        ckpt = find_checkpoint(model)
        self.config = cfg = ckpt.config
        self.dtype = _resolve_dtype(dtype, cfg.torch_dtype, self.device)
        if tokenizer is not None:
            self.tokenizer = Tokenizer.from_dir(tokenizer)
        elif ckpt.gguf_path is not None:
            self.tokenizer = Tokenizer.from_gguf(gguf_reader(ckpt.gguf_path))
        else:
            self.tokenizer = Tokenizer.from_dir(ckpt.folder)
        self.max_model_len = min(max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        eos = set(cfg.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos

        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = CausalLM(cfg)
        finally:
            torch.set_default_dtype(default_dtype)
        self.model.load_weights(ckpt.weights())
        self.model.eval()
        self.attention_backend = resolve_backend(attention_backend, self.device)
        self.model.set_backend(self.attention_backend)

        bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * self.dtype.itemsize
        if kv_cache_tokens is None:
            if self.device.type == "cuda":
                free, total = torch.cuda.mem_get_info(self.device)
                budget = free - (1 - gpu_memory_utilization) * total - _CUDA_HEADROOM_BYTES
            else:
                budget = _CPU_KV_BYTES
            kv_cache_tokens = int(budget // bytes_per_token)
        if kv_cache_tokens < 2:
            raise ValueError(f"kv_cache_tokens={kv_cache_tokens} is too small (not enough memory for the KV cache?)")
        self.kv_cache_tokens = kv_cache_tokens
        self.runner = ModelRunner(self.model, kv_cache_tokens, self.dtype, self.device, max_num_seqs, self.max_model_len)
        self.scheduler = Scheduler(kv_cache_tokens, max_num_batched_tokens, max_num_seqs, enable_prefix_caching)
        if self.device.type == "cuda" and self.attention_backend == "triton" and not enforce_eager:
            try:
                self.runner.capture_decode_graphs(min(max_num_seqs, 256))
            except RuntimeError as e:   # a failed or inexact capture only costs speed
                warnings.warn(f"CUDA graphs disabled, decode runs eagerly: {e}")
                self.runner.graphs = None
        self._rng = random.Random(seed)
        self._next_request = 0
        self._next_seq = 0
        self.reset_stats()

    # ------------------------------------------------------------ public API
    def get_tokenizer(self) -> Tokenizer:
        return self.tokenizer

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (between generate calls; as vLLM's reset_prefix_cache)."""
        if self.scheduler.has_work():
            raise RuntimeError("reset_prefix_cache() while sequences are running")
        self.scheduler.cache.clear()

    def reset_stats(self) -> None:
        self.scheduler.stats.__init__()
        self._generated = 0
        self._flops = 0
        self._steps = 0
        self._peak = self.scheduler.kv_tokens_in_use

    def stats(self) -> dict[str, int]:
        """Counters since creation or the last reset_stats(). Prompt tokens of the n samples of a
        request each count; cached + computed = prompt tokens, recomputed = work redone after preemption."""
        s = self.scheduler.stats
        return {
            "prompt_tokens": s.prompt_tokens,
            "cached_prompt_tokens": s.cached_prompt_tokens,
            "computed_prompt_tokens": s.computed_prompt_tokens,
            "recomputed_tokens": s.recomputed_tokens,
            "generated_tokens": self._generated,
            "preemptions": s.preemptions,
            "steps": self._steps,
            "kv_tokens_in_use": self.scheduler.kv_tokens_in_use,
            "kv_tokens_cached": self.scheduler.cache.num_cached,
            "kv_tokens_peak": self._peak,
            "kv_cache_tokens": self.kv_cache_tokens,
            "flops": self._flops,
        }

    def generate(self, prompts: Any, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for one prompt or a list of prompts: strings or {"prompt_token_ids": [...]} /
        {"prompt": "..."} dicts. Returns one RequestOutput per prompt, in order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts")
        requests = [self._make_request(p, sp) for p, sp in zip(prompts, params_list)]
        for _, _, group in requests:
            self.scheduler.add(group)
        self._run_to_completion(sum(len(g) for _, _, g in requests), use_tqdm)
        return [self._request_output(*r) for r in requests]

    def encode(self, prompts: list[list[int]], positions: list[list[int]] | None = None) -> list[torch.Tensor]:
        """Final hidden states ([len(positions), hidden], after the last norm) of token-id prompts at
        the given positions (default: all). The longest cached prefix before the first requested
        position is reused and the prompt stays cached, so scoring a prefix plus a new step
        computes only the new step. `self.model.compute_logits` turns them into logits."""
        if positions is None:
            positions = [list(range(len(p))) for p in prompts]
        if len(positions) != len(prompts):
            raise ValueError(f"got {len(positions)} position lists for {len(prompts)} prompts")
        params = SamplingParams(max_tokens=1)
        seqs = []
        for ids, pos in zip(prompts, positions):   # validate everything before queueing anything
            _, _, (seq,) = self._make_request({"prompt_token_ids": ids}, params)
            if not pos or any(not 0 <= p < len(ids) for p in pos):
                raise ValueError(f"positions must be a non-empty list within [0, {len(ids)}), got {pos!r:.80}")
            seq.hidden_positions = sorted(set(pos))
            seqs.append((seq, pos))
        for seq, _ in seqs:
            self.scheduler.add([seq])
        self._run_to_completion(len(seqs), use_tqdm=False)
        return [torch.stack([s.hidden_states[p] for p in pos]) for s, pos in seqs]

    # ------------------------------------------------------------ internals
    def _run_to_completion(self, total: int, use_tqdm: bool) -> None:
        bar = tqdm(total=total, desc="generate", disable=not use_tqdm)
        try:
            while self.scheduler.has_work():
                bar.update(self.step())
        except BaseException:
            self.scheduler.abort_all()   # leave the engine usable after an interrupt
            raise
        finally:
            bar.close()

    def _make_request(self, prompt: Any, params: SamplingParams) -> tuple[int, str | None, list[Sequence]]:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"expected SamplingParams, got {type(params).__name__}")
        text = None
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = list(prompt["prompt_token_ids"])
        elif isinstance(prompt, dict) and "prompt" in prompt:
            text, ids = prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
        else:
            raise ValueError(f"a prompt must be a string or a dict with 'prompt' or 'prompt_token_ids', got {prompt!r:.80}")
        if not ids:
            raise ValueError("prompt is empty (no tokens)")
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]!r} is outside the vocabulary [0, {self.config.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but the model's context is {self.max_model_len} "
                             f"(no room to generate)")
        need = min(len(ids) + params.max_tokens, self.max_model_len)
        if need > self.kv_cache_tokens:
            raise ValueError(f"a sequence needs up to {need} KV slots (prompt {len(ids)} + max_tokens "
                             f"{params.max_tokens}) but kv_cache_tokens={self.kv_cache_tokens}")
        rid = self._next_request
        self._next_request += 1
        group = []
        for k in range(params.n):
            seed = params.seed + k if params.seed is not None else self._rng.getrandbits(63)
            group.append(Sequence(self._next_seq, rid, k, ids, params, seed))
            self._next_seq += 1
        return rid, text, group

    def step(self) -> int:
        """Run one scheduler step; return how many sequences finished."""
        batch = self.scheduler.schedule()
        self._peak = max(self._peak, self.scheduler.kv_tokens_in_use)
        seqs, logits = self.runner.run(batch)
        spans = [(s.num_computed - 1, s.num_computed) for s in batch.decode] + [(a, b) for _, a, b in batch.prefill]
        # (the head's FLOPs for encode-only rows are counted when the caller computes logits, not here)
        self._flops += forward_flops(self.config, spans, len(seqs))
        self._steps += 1
        # Siblings forked off a just-computed prompt sample from the same logits row.
        rows = list(range(len(seqs)))
        for i, seq in enumerate(list(seqs)):
            if seq.forks:
                forked = self.scheduler.fork(seq)
                seqs += forked
                rows += [i] * len(forked)
        if len(rows) > logits.shape[0]:
            logits = logits[rows]
        tokens, logprobs = sample(logits, seqs)
        # one gather and one device-to-host copy for the whole batch
        index = torch.tensor(tokens, dtype=torch.long, device=logprobs.device)[:, None]
        chosen = logprobs.gather(1, index)[:, 0].tolist()
        finished = 0
        for seq, _, end in batch.prefill:
            if seq.hidden_positions is not None and end == len(seq):
                seq.finish_reason = "encoded"
                self.scheduler.finish(seq)
                finished += 1
        for i, (seq, tok) in enumerate(zip(seqs, tokens)):
            self._append(seq, tok, chosen[i], logprobs[i])
            if seq.finish_reason is not None:
                self.scheduler.finish(seq)
                finished += 1
        return finished

    def _append(self, seq: Sequence, token: int, lp: float, logprobs: torch.Tensor) -> None:
        p = seq.params
        seq.token_ids.append(token)
        self._generated += 1
        seq.cumulative_logprob += lp
        if seq.logprobs is not None:
            entry = {token: lp}
            if p.logprobs:
                top = torch.topk(logprobs, p.logprobs)
                entry.update(zip(top.indices.tolist(), top.values.tolist()))
            seq.logprobs.append(entry)
        if token in p.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token
        elif not p.ignore_eos and token in self.eos_token_ids:
            seq.finish_reason = "stop"
        elif p.stop:
            self._check_stop_strings(seq)
        if seq.finish_reason is None and (seq.num_output_tokens >= p.max_tokens or len(seq) >= self.max_model_len):
            seq.finish_reason = "length"

    def _check_stop_strings(self, seq: Sequence) -> None:
        """Match stop strings on the decoded text, so a stop made of several tokens (or inside one)
        is found. Only the tail that could hold a new match is searched."""
        p = seq.params
        prev_len = len(seq.text)
        seq.text = self.tokenizer.decode(seq.output_token_ids, p.skip_special_tokens)
        best = None
        for stop in p.stop:
            # a few characters of slack: the tail of earlier text can change as bytes complete
            i = seq.text.find(stop, max(0, prev_len - len(stop) - 4))
            if i >= 0 and (best is None or i < best[0]):
                best = (i, stop)
        if best is not None:
            seq.text = seq.text[:best[0] + len(best[1])]
            seq.finish_reason, seq.stop_reason = "stop", best[1]

    def _request_output(self, rid: int, text: str | None, group: list[Sequence]) -> RequestOutput:
        outs = []
        for s in group:
            if not isinstance(s.stop_reason, str):
                s.text = self.tokenizer.decode(s.output_token_ids, s.params.skip_special_tokens)
            outs.append(CompletionOutput(s.index, s.text, s.output_token_ids, s.cumulative_logprob,
                                         s.finish_reason, s.stop_reason, s.logprobs))
        return RequestOutput(rid, text, group[0].token_ids[:group[0].num_prompt_tokens], outs,
                             sum(s.num_cached_prompt_tokens for s in group))


def _resolve_dtype(dtype: str | torch.dtype, config_dtype: str | None, device: torch.device) -> torch.dtype:
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

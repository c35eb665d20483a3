"""LLM: the public offline API, a subset of vLLM's (`LLM(...).generate(prompts, SamplingParams)`).

A front door only: it checks arguments, turns prompts into requests, lets the engine run them
and shapes the results as vLLM's RequestOutput. The step loop lives in engine/engine.py.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from tqdm import tqdm

from tts_engine.config import EngineConfig
from tts_engine.engine.engine import Engine
from tts_engine.engine.sequence import Request
from tts_engine.outputs import CompletionOutput, RequestOutput
from tts_engine.sampling_params import SamplingParams
from tts_engine.tokenizer import Tokenizer


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, dtype: str | torch.dtype = "auto",
                 device: str | None = None, kv_cache_tokens: int | None = None, seed: int = 0,
                 enable_prefix_caching: bool = True, max_num_batched_tokens: int = 2048,
                 max_num_seqs: int = 256, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, attention_backend: str = "auto",
                 enforce_eager: bool = False):
        self.engine = Engine(EngineConfig(
            model=model, tokenizer=tokenizer, dtype=dtype, device=device, seed=seed,
            kv_cache_tokens=kv_cache_tokens, gpu_memory_utilization=gpu_memory_utilization,
            max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching, attention_backend=attention_backend,
            enforce_eager=enforce_eager))
        if not self.engine.can_generate:
            raise ValueError(
                f"{model!r} is a {self.engine.model_config.architecture} with a "
                f"'{self.engine.model.head_name}' head, not a language model head: it cannot generate"
            )

    # ------------------------------------------------------------ public API
    def get_tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (between generate calls; as vLLM's reset_prefix_cache)."""
        self.engine.reset_prefix_cache()

    def reset_stats(self) -> None:
        self.engine.reset_stats()

    def stats(self) -> dict[str, int]:
        """Counters since creation or the last reset_stats(). Prompt tokens of the n samples of a
        request each count; cached + computed = prompt tokens, recomputed = work redone after preemption."""
        e = self.engine
        return {**asdict(e.stats), "kv_tokens_in_use": e.scheduler.kv_tokens_in_use,
                "kv_tokens_cached": e.scheduler.cache.num_cached, "kv_cache_tokens": e.kv_cache_tokens}

    def generate(self, prompts: Any, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for one prompt or a list of prompts: strings or {"prompt_token_ids": [...]} /
        {"prompt": "..."} dicts. Returns one RequestOutput per prompt, in order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = (
            sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        )
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts")
        requests = [self._request(p, sp) for p, sp in zip(prompts, params_list)]
        self._run(requests, use_tqdm)
        return [self._output(r) for r in requests]

    def encode(
        self, prompts: list[list[int]], positions: list[list[int]] | None = None
    ) -> list[torch.Tensor]:
        """Final hidden states ([len(positions), hidden], after the last norm) of token-id prompts at
        the given positions (default: all). The longest cached prefix before the first requested
        position is reused and the prompt stays cached, so scoring a prefix plus a new step
        computes only the new step. `llm.engine.model.compute_logits` turns them into logits."""
        if positions is None:
            positions = [list(range(len(p))) for p in prompts]
        if len(positions) != len(prompts):
            raise ValueError(f"got {len(positions)} position lists for {len(prompts)} prompts")
        requests = []
        for ids, pos in zip(prompts, positions):   # validate everything before queueing anything
            if not pos or any(not isinstance(p, int) or not 0 <= p < len(ids) for p in pos):
                raise ValueError(
                    f"positions must be a non-empty list within [0, {len(ids)}), got {pos!r:.80}"
                )
            requests.append(
                self.engine.make_request(
                    list(ids), SamplingParams(max_tokens=1), hidden_positions=pos, generates=False
                )
            )
        self._run(requests, use_tqdm=False)
        return [torch.stack([r.seqs[0].hidden_states[p] for p in pos]) for r, pos in zip(requests, positions)]

    # ------------------------------------------------------------ internals
    def _request(self, prompt: Any, params: SamplingParams) -> Request:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"expected SamplingParams, got {type(params).__name__}")
        text = None
        if isinstance(prompt, str):
            text, ids = prompt, self.engine.tokenizer.encode(prompt)
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = list(prompt["prompt_token_ids"])
        elif isinstance(prompt, dict) and "prompt" in prompt:
            text, ids = prompt["prompt"], self.engine.tokenizer.encode(prompt["prompt"])
        else:
            raise ValueError(f"a prompt must be a string or a dict with 'prompt' or 'prompt_token_ids', "
                             f"got {prompt!r:.80}")
        return self.engine.make_request(ids, params, text)

    def _run(self, requests: list[Request], use_tqdm: bool) -> None:
        for r in requests:
            self.engine.add(r)
        with tqdm(total=sum(len(r.seqs) for r in requests), desc="generate", disable=not use_tqdm) as bar:
            self.engine.run(bar.update)

    @staticmethod
    def _output(r: Request) -> RequestOutput:
        outs = [CompletionOutput(s.index, s.text, s.output_token_ids, s.cumulative_logprob, s.finish_reason,
                                 s.stop_reason, s.logprobs) for s in r.seqs]
        return RequestOutput(r.request_id, r.prompt, r.prompt_token_ids, outs,
                             sum(s.num_cached_prompt_tokens for s in r.seqs))

"""LLM: vLLM's offline API (`LLM(model).generate(prompts, SamplingParams)`, `chat`, `get_tokenizer`),
so a client written for vLLM runs with `from tts_engine import LLM, SamplingParams`.

A front door only: it checks arguments, turns prompts into requests, lets the engine run them and
shapes the results as vLLM's RequestOutput. The step loop lives in engine/engine.py.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
from tqdm import tqdm

from tts_engine.config import EngineConfig
from tts_engine.engine.engine import Engine
from tts_engine.engine.sequence import Request, Sequence, Status
from tts_engine.outputs import CompletionOutput, Logprob, RequestOutput
from tts_engine.sampling_params import SamplingParams
from tts_engine.text import check_unicode
from tts_engine.tokenizer import Tokenizer

# vLLM constructor arguments accepted only at the value that means "nothing to do" here
_AT_DEFAULT = {"tokenizer_mode": "auto", "skip_tokenizer_init": False, "revision": None,
               "tokenizer_revision": None, "quantization": None, "cpu_offload_gb": 0, "download_dir": None,
               "load_format": "auto", "pipeline_parallel_size": 1, "hf_overrides": None,
               "compilation_config": None, "kv_cache_dtype": "auto"}
# vLLM constructor arguments that change nothing in a single-process engine without swapping or logs
_NO_EFFECT = {"swap_space", "disable_log_stats", "disable_custom_all_reduce", "disable_async_output_proc",
              "max_seq_len_to_capture", "hf_token", "enable_chunked_prefill"}


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, *, dtype: str | torch.dtype = "auto",
                 seed: int = 0, gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 enable_prefix_caching: bool = True, enforce_eager: bool = False,
                 tensor_parallel_size: int = 1, trust_remote_code: bool = False, device: str | None = None,
                 kv_cache_tokens: int | None = None,
                 max_num_batched_tokens: int = 2048, max_num_seqs: int = 256, attention_backend: str = "auto",
                 check_weights: bool = True, overlap: bool | None = None, **vllm_kwargs):
        """vLLM's common arguments with vLLM's defaults, and this engine's own (device, kv_cache_tokens,
        attention_backend, check_weights, overlap: prepare each step while the one before runs, by
        default on CUDA only).
        trust_remote_code is accepted and changes nothing: no code from a checkpoint ever runs.
        Other vLLM arguments are refused by name unless they change nothing here."""
        for name, value in vllm_kwargs.items():
            if name in _AT_DEFAULT and value != _AT_DEFAULT[name]:
                raise ValueError(f"LLM({name}={value!r}) is not supported by tts-engine "
                                 f"(leave it at {_AT_DEFAULT[name]!r})")
            if name not in _AT_DEFAULT and name not in _NO_EFFECT:
                raise ValueError(f"LLM() got an unknown argument {name!r}")
        if tensor_parallel_size != 1:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size}: tts-engine runs a model on one "
                             f"device (tensor parallelism is not implemented); use tensor_parallel_size=1")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.engine = Engine(EngineConfig(
            model=model, tokenizer=tokenizer, dtype=dtype, device=device, seed=seed,
            kv_cache_tokens=kv_cache_tokens, gpu_memory_utilization=gpu_memory_utilization,
            max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
            max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
            attention_backend=attention_backend, enforce_eager=enforce_eager, check_weights=check_weights,
            overlap=overlap))
        self._live: dict[str, Request] = {}       # add_request()'s requests not finished yet
        self._stepper = None                      # engine.steps() while step() drives it
        if not self.engine.can_generate:
            raise ValueError(f"{model!r} is a {self.engine.model_config.architecture} with a "
                             f"'{self.engine.model.head_name}' head, not a language model head: "
                             f"it cannot generate")

    # ------------------------------------------------------------ public API
    def get_tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        """Tokens a prompt and its output may hold together (the model's context, or the cap)."""
        return self.engine.max_model_len

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (between generate calls). True when done, as in vLLM."""
        self.engine.reset_prefix_cache()
        return True

    def reset_stats(self) -> None:
        self.engine.reset_stats()

    def stats(self) -> dict[str, int]:
        """Counters since creation or the last reset_stats(). Prompt tokens of the n samples of a
        request each count; cached + computed = prompt tokens, recomputed = work redone after preemption."""
        return self.engine.counters()

    def generate(self, prompts: Any, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True, lora_request: None = None) -> list[RequestOutput]:
        """Generate for one prompt or a list: strings, {"prompt": text} or {"prompt_token_ids": ids}
        (vLLM's TextPrompt / TokensPrompt). One SamplingParams for all, or a list with one per
        prompt. Returns one RequestOutput per prompt, in order."""
        if lora_request is not None:
            raise ValueError("lora_request is not supported by tts-engine")
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a string, a prompt dict or a list of them, got "
                             f"{type(prompts).__name__}")
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = list(sampling_params) if isinstance(sampling_params, (list, tuple)) else \
            [sampling_params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts")
        requests = [self._request(p, sp) for p, sp in zip(prompts, params_list)]
        self._run(requests, use_tqdm)
        return [self._output(r) for r in requests]

    # ------------------------------------------------------------ one step at a time
    def add_request(self, prompt: Any, sampling_params: SamplingParams | None = None) -> str:
        """Queue one prompt (as `generate` takes it) without running it; returns its request id.
        `step` runs the engine and returns samples as they finish; `abort_request` cancels
        (vLLM's LLMEngine.add_request / step / abort_request, for searches that react mid-flight)."""
        r = self._request(prompt, sampling_params if sampling_params is not None else SamplingParams())
        self.engine.add(r)
        self._live[str(r.request_id)] = r
        return str(r.request_id)

    def step(self) -> list[RequestOutput]:
        """Run one engine step (on a GPU the next one is already queued when this returns). Returns,
        per request with samples that finished in it (or were cancelled since the last step), a
        RequestOutput of just those samples, its `work` theirs; `finished` when none of its
        samples is left running. Nothing queued: []."""
        if self._stepper is None:
            self._stepper = self.engine.steps()
        try:
            seqs = next(self._stepper)
        except StopIteration:
            self._stepper, seqs = None, []
        except BaseException:
            self._stepper = None
            self._live.clear()     # (the engine aborted them all)
            raise
        by_request: dict[str, list] = {}
        for seq in seqs:
            by_request.setdefault(str(seq.request_id), []).append(seq)
        outs = []
        for rid, done in by_request.items():
            r = self._live[rid]
            finished = all(s.status is Status.FINISHED for s in r.seqs)
            if finished:
                del self._live[rid]
            outs.append(self._output(r, sorted(done, key=lambda s: s.index), finished))
        if not self._live and self._stepper is not None:
            # (nothing of ours runs: end the loop, so that its last step is seen and the heap thawed)
            for _ in self._stepper:
                pass
            self._stepper = None
        return outs

    def abort_request(self, request_id: str | list[str], indices: list[int] | None = None) -> None:
        """Cancel a request's samples (all, or those of these indices) that are still running: the
        next `step` returns them with finish_reason "cancelled", their tokens so far and their
        work (counted as spent); their K/V stay cached. Ids of finished requests are ignored."""
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            r = self._live.get(rid)
            if r is not None:
                self.engine.cancel([s for s in r.seqs if indices is None or s.index in indices])

    def has_unfinished_requests(self) -> bool:
        return bool(self._live)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | list | None = None,
             use_tqdm: bool = True, lora_request: None = None, chat_template: str | None = None,
             add_generation_prompt: bool = True, continue_final_message: bool = False,
             chat_template_kwargs: dict | None = None, **kwargs) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of {"role", "content"} messages) or a list of
        them, rendered with the model's chat template (or chat_template)."""
        unsupported = sorted(k for k, v in kwargs.items() if v not in (None, "auto"))
        if unsupported:
            raise ValueError(f"LLM.chat() does not support {', '.join(unsupported)}")
        batched = bool(messages) and isinstance(messages[0], (list, tuple))
        texts = self.engine.tokenizer.apply_chat_template(
            messages if batched else [messages], chat_template=chat_template, tokenize=False,
            add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
            **(chat_template_kwargs or {}))
        # the template writes its own special tokens (BOS among them): none are added again
        tok = self.engine.tokenizer
        prompts = [{"prompt_token_ids": tok.encode(t, add_special_tokens=False), "prompt": t} for t in texts]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request)

    def encode(self, prompts: list[list[int]],
               positions: list[list[int]] | None = None) -> list[torch.Tensor]:
        """Final hidden states ([len(positions), hidden], after the last norm) of token-id prompts at
        the given positions (default: all). The longest cached prefix before the first requested
        position is reused and the prompt stays cached, so scoring a prefix plus a new step
        computes only the new step. `llm.engine.apply_head` turns them into logits."""
        prompts = [_token_ids(p) for p in prompts]
        if positions is None:
            positions = [list(range(len(p))) for p in prompts]
        return [e.hidden for e in self.engine.encode(prompts, positions)]

    # ------------------------------------------------------------ internals
    def _request(self, prompt: Any, params: SamplingParams) -> Request:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"expected SamplingParams, got {type(params).__name__}")
        text = None
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = _token_ids(prompt["prompt_token_ids"])
            text = prompt.get("prompt")
        elif isinstance(prompt, dict) and "prompt" in prompt:
            text = prompt["prompt"]
        elif isinstance(prompt, str):
            text = prompt
        else:
            raise ValueError(f"a prompt must be a string or a dict with 'prompt' or 'prompt_token_ids', got "
                             f"{type(prompt).__name__} {prompt!r:.60}")
        if isinstance(prompt, dict):
            extra = sorted(set(prompt) - {"prompt", "prompt_token_ids"})
            if extra:
                raise ValueError(f"prompt fields {', '.join(extra)} are not supported (text-only models)")
        if not isinstance(text, (str, type(None))):
            raise ValueError(f"a prompt's text must be a string, got {type(text).__name__}")
        if text is not None:
            check_unicode("prompt", text)
        if not (isinstance(prompt, dict) and "prompt_token_ids" in prompt):
            ids = self.engine.tokenizer.encode(text)
        return self.engine.make_request(ids, params, text)

    def _run(self, requests: list[Request], use_tqdm: bool) -> None:
        if self._live:
            raise RuntimeError(f"generate() while {len(self._live)} requests of add_request() are running: "
                               f"step() until has_unfinished_requests() is False first")
        for r in requests:
            self.engine.add(r)
        total = sum(len(r.seqs) for r in requests)
        with tqdm(total=total, desc="Processed prompts", disable=not use_tqdm) as bar:
            self.engine.run(lambda done: bar.update(len(done)))

    def _output(self, r: Request, seqs: list[Sequence] | None = None, finished: bool = True) -> RequestOutput:
        """r's output: all its samples, or these."""
        seqs = r.seqs if seqs is None else seqs
        outs = [CompletionOutput(s.index, s.text, s.output_token_ids, s.cumulative_logprob,
                                 self._logprobs(s.logprobs, r.params), s.finish_reason, s.stop_reason,
                                 hidden_states=_step_end_state(s))
                for s in seqs]
        prompt_logprobs = None
        first = r.seqs[0]       # (it keeps them, unless it was cancelled before its prompt was computed)
        if r.params.prompt_logprobs is not None and first in seqs and \
                len(first.hidden_states) == len(r.prompt_token_ids) - 1:
            prompt_logprobs = [None] + self._logprobs(self.engine.prompt_logprobs(r)[1:], r.params)
        cached = sum(s.num_cached_prompt_tokens for s in seqs)
        return RequestOutput(str(r.request_id), r.prompt, r.prompt_token_ids, prompt_logprobs, outs, finished,
                             num_cached_tokens=cached, work=r.work(seqs))

    def _logprobs(self, entries: list[dict[int, tuple[float, int]]] | None, params: SamplingParams):
        if entries is None:
            return None
        tok = self.engine.tokenizer
        decoded = (lambda t: tok.decode([t])) if params.detokenize else (lambda t: None)   # noqa: E731
        return [{t: Logprob(lp, rank, decoded(t)) for t, (lp, rank) in e.items()} for e in entries]


def _step_end_state(seq: Sequence) -> torch.Tensor | None:
    """[1, hidden] on the host: the state the sequence's last token was sampled from, when it asked
    and a stop string, stop token or EOS ended it (one copy per completion, at its end)."""
    if not seq.params.return_hidden_states or seq.finish_reason != "stop" or seq.last_hidden is None:
        return None
    return seq.last_hidden.cpu().unsqueeze(0)


def _token_ids(ids) -> list[int]:
    """Token ids as Python ints; numpy and torch integers are accepted too."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"prompt_token_ids must be a list of integers, got {type(ids).__name__}")
    ids = list(ids)
    bad = [t for t in ids if isinstance(t, bool) or not hasattr(t, "__index__")]
    if bad:
        raise ValueError(f"prompt_token_ids must be integers, got {bad[0]!r}")
    return [operator.index(t) for t in ids]


"""The engine: the step loop that every front door (LLM, PRM) drives.

A step is schedule (scheduler.py) -> prepare (the runner's host half) -> execute (its device half)
-> postprocess: each sampled token joins its sequence and the stop rules run (output.py), kept
hidden states are stored, finished sequences hand their K/V to the cache. Everything the loop
uses is built once by build.py; requests are checked by requests.py.

`run` overlaps the host with the device (SGLang's overlap scheduler, vLLM's async scheduling):
step t+1 is scheduled and prepared while step t executes, and step t is postprocessed while step
t+1 executes. So step t+1 assumes that every sequence that sampled in step t goes on; one that
step t finished wastes its row of step t+1, whose result is dropped. The output is the same as
`step` by step: each sequence draws from its own generator, and every sampled token reaches the
host before a step that needs it on the host is prepared (penalties and min_tokens read the
tokens so far: a batch with such a sequence waits for the step before it). The device half runs
on a worker thread: on a GPU it queues kernels on the stream while the host goes on; on the CPU
it computes (torch releases the GIL in its kernels), so the overlap is real there too, but it is
off there by default (EngineConfig.overlap: both halves are Python under one GIL, and small
models lose more to that than they gain).
"""
from __future__ import annotations

import contextlib
import functools
import gc
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch

from tts_engine.config import EngineConfig
from tts_engine.engine.build import build
from tts_engine.engine.cache import Prefix
from tts_engine.engine.logits_process import needs_processing
from tts_engine.engine.logprobs import prompt_logprobs
from tts_engine.engine.output import OutputProcessor
from tts_engine.engine.requests import RequestMaker
from tts_engine.engine.runner import StepOutput
from tts_engine.engine.scheduler import ScheduledBatch, Scheduler
from tts_engine.engine.sequence import Request, Sequence, Status
from tts_engine.engine.stats import EngineStats
from tts_engine.engine.traffic import Traffic
from tts_engine.flops import decode_token_cost, decoder_flops
from tts_engine.models.heads import LMHead
from tts_engine.sampling_params import SamplingParams
from tts_engine.work import Work


@contextlib.contextmanager
def _heap_frozen():
    """While the engine runs, what existed before (the model, the caller's objects) sits outside
    the garbage collector's generations (gc.freeze), so a collection walks only what the steps
    made: full collections that walked everything landed inside steps and cost 1.5-12 ms each at
    256 sequences (vLLM freezes its start-up heap for the same reason). The freeze is the whole
    process's: garbage that exists when the run starts waits for its end. Left alone when the
    collector is off or objects are frozen already when the run starts (unfreeze would release
    those too)."""
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        parts = build(config)
        self.device, self.dtype, self.model_config = parts.device, parts.dtype, parts.model_config
        self.tokenizer, self.max_model_len = parts.tokenizer, parts.max_model_len
        self.eos_token_ids, self.model = parts.eos_token_ids, parts.model
        self.kv_cache_tokens, self.runner = parts.kv_cache_tokens, parts.runner
        self.scheduler = Scheduler(config, self.kv_cache_tokens, self.max_model_len)
        self.output = OutputProcessor(self.tokenizer, self.eos_token_ids, self.max_model_len,
                                      self.model_config.vocab_size)
        self.requests = RequestMaker(self.model_config.vocab_size, self.max_model_len, self.kv_cache_tokens,
                                     config.seed)
        self.overlap = self.device.type == "cuda" if config.overlap is None else config.overlap
        self._head_flops = type(self.model.head).flops
        self.traffic = Traffic.of(self.model, self.dtype.itemsize)
        self._decode_cost = decode_token_cost(self.model_config, self._head_flops(self.model_config, 1))
        self.tokenizer_fits = tokenizer_fits(self.tokenizer, self.model_config.vocab_size)
        self._worker: ThreadPoolExecutor | None = None
        self._cancelled: list[Sequence] = []     # cancelled since the last step (steps reports them)
        self._looping = False                    # a steps() loop is under way
        self.reset_stats()

    @property
    def can_generate(self) -> bool:
        return isinstance(self.model.head, LMHead)

    def make_request(self, prompt_token_ids: list[int], params: SamplingParams, prompt: str | None = None,
                     hidden_positions: list[int] | None = None, generates: bool = True) -> Request:
        """A checked request (requests.RequestMaker); `add` queues it."""
        return self.requests(prompt_token_ids, params, prompt, hidden_positions, generates)

    def encode(self, prompts: list[list[int]], positions: list[list[int]], ids_from_tokenizer: bool = False,
               after: list[Prefix | None] | None = None) -> list[Encoded]:
        """The final hidden states of each prompt at its positions, and what computing them cost.
        The longest cached prefix before a prompt's first position is reused and the prompt stays
        cached, so a prompt that extends an encoded one computes only its new tokens. Everything
        is checked before anything is queued. The prompts' lists are kept, not copied (each
        Encoded.prefix refers to its prompt): the caller must never change them afterwards.
        ids_from_tokenizer: the caller wrote every id with this engine's tokenizer, so when its
        vocabulary fits the model's they are not checked one by one (a PRM's prompts are whole
        trajectories, every round). after: for each prompt, the `prefix` of an earlier Encoded
        that it may extend (checked: a wrong one only costs a comparison), so that finding its
        cached prefix does not walk the whole path."""
        for name, given in (("position lists", positions), ("prefixes", after)):
            if given is not None and len(given) != len(prompts):
                raise ValueError(f"got {len(given)} {name} for {len(prompts)} prompts")
        if any(p is not None and not isinstance(p, Prefix) for p in after or ()):
            raise ValueError("after must hold, for each prompt, None or the prefix of an earlier Encoded")
        requests = []
        for ids, pos in zip(prompts, positions):
            if not pos or any(type(p) is not int or not 0 <= p < len(ids) for p in pos):
                raise ValueError(f"positions must be a non-empty list of integers within [0, {len(ids)}), "
                                 f"got {pos!r:.80}")
            requests.append(self.requests(ids, _ENCODE, hidden_positions=pos, generates=False,
                                          trusted=ids_from_tokenizer and self.tokenizer_fits))
        for r, prefix in zip(requests, after or ()):
            r.seqs[0].after = prefix
        self._check_idle()               # (before anything is queued)
        for r in requests:
            self.add(r)
        self.run()
        return [Encoded(torch.stack([r.seqs[0].hidden_states[p] for p in pos]), r.work(),
                        r.seqs[0].published) for r, pos in zip(requests, positions)]

    def apply_head(self, hidden: torch.Tensor, columns: list[int] | None = None) -> torch.Tensor:
        """The model's head on hidden states (of the LM head, only these token ids' columns, when
        given); its FLOPs are counted."""
        kwargs = {"columns": torch.tensor(columns, device=hidden.device)} if columns is not None else {}
        self.stats.flops += self.head_flops(len(hidden), columns)
        self.stats.weight_bytes += self.head_weight_bytes(columns)
        return self.model.compute_logits(hidden, **kwargs)

    def head_flops(self, rows: int, columns: list[int] | None = None) -> int:
        return self._head_flops(self.model_config, rows, len(columns) if columns is not None else None)

    def head_weight_bytes(self, columns: list[int] | None = None) -> float:
        """The head's weights one call reads (of the LM head, only these token ids' rows)."""
        if columns is None:
            return float(self.traffic.head_weights)
        return self.traffic.head_weights * len(columns) / self.model_config.vocab_size

    def add(self, request: Request) -> None:
        self.scheduler.add(request.seqs)

    # ------------------------------------------------------------ the loop
    def run(self, on_finished: Callable[[list[Sequence]], object] | None = None) -> None:
        """Step until every queued sequence is done; on_finished(seqs) after each step, with the
        sequences it finished."""
        for finished in self.steps():
            if on_finished is not None:
                on_finished(finished)

    def steps(self) -> Iterator[list[Sequence]]:
        """The loop as a generator: after each step, the sequences it finished (and those cancelled
        since the step before). Between two of its yields the caller may add requests and cancel
        sequences; it ends when nothing is queued or running. Any exception (KeyboardInterrupt
        included), or closing it before its end, aborts all work and clears the cache, which may
        list slots whose K/V were never written, so the engine stays usable. One loop at a time:
        a second is refused here, before anything runs."""
        self._check_idle()
        return self._loop()

    def _check_idle(self) -> None:
        if self._looping:
            raise RuntimeError("the engine's loop is already running (LLM.step() has requests in flight): "
                               "step them to the end first")

    def _loop(self) -> Iterator[list[Sequence]]:
        self._check_idle()               # (again: two loops made before either started)
        self._looping = True             # (set once running: a loop never started leaves no trace)
        pending: tuple[ScheduledBatch, Future] | None = None     # the step the host has not seen yet
        last: Future | None = None                               # the newest step handed to the device
        try:
            with _heap_frozen():
                while self.scheduler.has_work():
                    if not self.overlap:
                        yield self._reported(self.step())
                        continue
                    if pending is not None and self._needs_host_state():
                        yield self._reported(self._postprocess(pending[0], pending[1].result()))
                        pending = None
                    batch = self._schedule(pending is None)
                    if pending is not None and not batch:
                        yield self._reported(self._postprocess(pending[0], pending[1].result()))
                        pending = None
                    if batch:
                        last = self._submit(self.runner.prepare(batch, self.eos_token_ids))
                        if pending is not None:
                            done = self._postprocess(pending[0], pending[1].result())
                            pending = (batch, last)
                            yield self._reported(done)
                        else:
                            pending = (batch, last)
                if pending is not None:
                    yield self._reported(self._postprocess(pending[0], pending[1].result()))
                if self._cancelled:
                    yield self._reported([])
        except BaseException:
            try:
                if last is not None:  # the device works in order: when the newest step is done, all are
                    last.exception()
            finally:
                self.scheduler.abort_all()
                self._cancelled = []
            raise
        finally:
            self._looping = False

    def _reported(self, finished: list[Sequence]) -> list[Sequence]:
        out, self._cancelled = self._cancelled + finished, []
        return out

    def cancel(self, seqs: list[Sequence]) -> None:
        """Finish these sequences now (vLLM's abort), keeping what they computed: their K/V go to
        the prefix cache, so a prefix they share with others stays cached; their tokens so far are
        their output, with finish_reason "cancelled"; what they cost stays counted. A step in
        flight computes a row for them that nobody keeps, as for a sequence the step before
        finished. `steps` reports them after its next step. Finished ones are left alone."""
        for seq in seqs:
            if seq.status is Status.FINISHED:
                continue
            self.scheduler.cancel(seq)
            seq.finish_reason = "cancelled"
            self._close(seq)
            self._cancelled.append(seq)

    def step(self) -> list[Sequence]:
        """Run one step synchronously; return the sequences it finished."""
        batch = self._schedule(True)
        if not batch:
            return []
        return self._postprocess(batch, self.runner.execute(self.runner.prepare(batch, self.eos_token_ids)))

    def _schedule(self, settled: bool) -> ScheduledBatch:
        """The next batch. settled: no step is pending, so an empty batch means no progress."""
        batch = self.scheduler.schedule()
        if settled and not batch and self.scheduler.has_work():
            raise RuntimeError("scheduler made no progress: the KV pool cannot hold the next sequence")
        self.stats.kv_tokens_peak = max(self.stats.kv_tokens_peak, self.scheduler.kv_tokens_in_use)
        return batch

    def _needs_host_state(self) -> bool:
        """Whether a running sequence's next draw needs its tokens so far on the host (penalties,
        min_tokens bans): then the step in flight is postprocessed before the next is scheduled,
        so that the next batch holds no row of a sequence that step finished."""
        return any(needs_processing(s) for s in self.scheduler.running)

    def _submit(self, prepared) -> Future:
        if self._worker is None:
            # (nothing the thread holds may refer to the engine, or the engine would never be freed)
            cuda = self.device.type == "cuda"
            init = functools.partial(torch.cuda.set_device, self.device) if cuda else None
            self._worker = ThreadPoolExecutor(1, "tts-engine-device", initializer=init)
            weakref.finalize(self, self._worker.shutdown, wait=False)
        return self._worker.submit(self.runner.execute, prepared)

    # ------------------------------------------------------------ after a step
    def _postprocess(self, batch: ScheduledBatch, out: StepOutput) -> list[Sequence]:
        """Apply a step's results; return the sequences it finished."""
        self._count(batch)
        for (seq, pos), h in zip(batch.kept, out.kept if out.kept is not None else ()):
            seq.hidden_states[pos] = h
        # (status: an encode-only sequence preempted and readmitted while its last chunk was in
        # flight has two such chunks; the first finished it)
        finished = [c.seq for c in batch.prefill
                    if not c.seq.generates and c.end == len(c.seq) and c.seq.status is not Status.FINISHED]
        for seq in finished:
            seq.finish_reason = "encoded"
        if out.hidden is not None:          # (a row of a sequence finished since it was scheduled is void)
            for seq, h in zip(batch.sampling, out.hidden):
                if seq.params.return_hidden_states and seq.status is not Status.FINISHED:
                    seq.last_hidden = h
        done, appended = self.output.append_all(batch.sampling, out.rows)
        self.stats.generated_tokens += appended
        finished += done
        for seq in finished:
            self._close(seq)
            self.scheduler.finish(seq)
        return finished

    def _close(self, seq: Sequence) -> None:
        """What a finished sequence gets: what its cached prompt saved, and its whole text."""
        seq.saved_flops = decoder_flops(self.model_config, [(0, seq.num_cached_prompt_tokens)])
        self.output.finish_text(seq)

    def _count(self, batch: ScheduledBatch) -> None:
        """FLOPs and bytes moved (engine/traffic.py) of the step's live rows, in all and per
        sequence (a request's work is its sequences'). A caller that applies the head to kept
        hidden states counts those itself (apply_head)."""
        cfg, total, tr = self.model_config, 0, self.traffic
        token, per_key, window = self._decode_cost
        lens = batch.decode_lens if window is None else [min(n, window) for n in batch.decode_lens]
        # (a row of a sequence that the step before finished is wasted: the live rows share the
        # step's reads, so that the sequences' bytes add up to the step's)
        live = [seq.status is not Status.FINISHED for seq in batch.decode]
        # the step's weights, split by its live tokens (decoder) and head rows (head)
        rows = sum(live) + sum(int(c.samples) for c in batch.prefill)
        tokens = sum(live) + sum(c.end - c.start for c in batch.prefill)
        per_token = tr.decoder_weights / tokens + tr.embedding_row if tokens else 0.0
        per_row = tr.head_weights / rows if rows else 0.0
        weights = reads = writes = 0.0
        keys_of = [float(n) for n in (batch.decode_lens if batch.decode_own is None else batch.decode_own)]
        for span, members in batch.decode_shared:        # each cascade span once, among its live rows
            readers = [r for r in members if live[r]]
            for r in readers:
                keys_of[r] += span / len(readers)
        for seq, n, keys, alive in zip(batch.decode, lens, keys_of, live):
            if alive:
                seq.flops += (f := token + per_key * n)
                total += f
                seq.weight_bytes += per_token + per_row
                seq.kv_read_bytes += (r := tr.decode_keys(keys) * tr.kv_token)
                seq.kv_write_bytes += tr.kv_token
                weights, reads, writes = weights + per_token + per_row, reads + r, writes + tr.kv_token
        for c in batch.prefill:
            n, seq = c.end - c.start, c.seq
            f = decoder_flops(cfg, [(c.start, c.end)]) + self._head_flops(cfg, int(c.samples))
            seq.flops += f
            seq.computed_tokens += n
            total += f
            seq.weight_bytes += (w := per_token * n + per_row * int(c.samples))
            seq.kv_read_bytes += (r := tr.prefill_keys(c.start, c.end) * tr.kv_token)
            seq.kv_write_bytes += n * tr.kv_token
            weights, reads, writes = weights + w, reads + r, writes + n * tr.kv_token
        st = self.stats
        st.flops += total
        st.weight_bytes += weights
        st.kv_read_bytes += reads
        st.kv_write_bytes += writes
        st.steps += 1

    def prompt_logprobs(self, request: Request) -> list[dict[int, tuple[float, int]] | None]:
        """Per prompt token, {token: (logprob, rank)} under the model given the tokens before it
        (logprobs.prompt_logprobs), from the hidden states its first sequence kept; the head's
        FLOPs are counted."""
        seq = request.seqs[0]
        out = prompt_logprobs(self.model, seq.hidden_states, request.prompt_token_ids,
                              request.params.prompt_logprobs)
        flops = self.head_flops(len(request.prompt_token_ids) - 1)
        self.stats.flops += flops
        seq.flops += flops
        self.stats.weight_bytes += (head := self.head_weight_bytes())
        seq.weight_bytes += head
        return out

    # ------------------------------------------------------------ cache and counters
    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (between requests, as vLLM's reset_prefix_cache)."""
        if self.scheduler.has_work():
            raise RuntimeError("reset_prefix_cache() while sequences are running")
        self.scheduler.cache.clear()

    def reset_stats(self) -> None:
        self.stats = self.scheduler.stats = EngineStats(kv_tokens_peak=self.scheduler.kv_tokens_in_use)

    def counters(self) -> dict[str, int]:
        """The counters since the last reset, and the KV pool's occupancy now."""
        return {**asdict(self.stats), "kv_tokens_in_use": self.scheduler.kv_tokens_in_use,
                "kv_tokens_cached": self.scheduler.cache.num_cached, "kv_cache_tokens": self.kv_cache_tokens}


def tokenizer_fits(tokenizer, vocab_size: int) -> bool:
    """Every id the tokenizer can write is inside the model's vocabulary (then ids it wrote need no
    check one by one). The largest id, not the count: vocabularies may have gaps."""
    return max(tokenizer.get_vocab().values(), default=-1) < vocab_size


@dataclass
class Encoded:
    hidden: torch.Tensor        # [positions, hidden size], after the final norm
    work: Work
    prefix: Prefix | None       # where the prompt ended in the radix tree (for `encode`'s after)


_ENCODE = SamplingParams(max_tokens=1)


"""Model runner: owns the model, the KV pool and the slot table, and runs a scheduled batch in two
halves. `prepare` is host work only (lists from the sequences, the cascade plan, the draws'
uniforms), so it can run while the device still works on the step before. `execute` is the
device's part, in order: upload, slot-table writes, the forward pass, sampling, and the step's
one copy back to the host.

The slot table (SGLang's req_to_token) has a row per running sequence listing its slots. Nothing
writes it but `execute`: the step's new tokens (from the slot mapping the step uploads anyway),
rows of contexts admitted on a cached prefix (from the slot ids the tree keeps on the device),
and forked siblings' rows (copied from their parent's). So a row is never uploaded whole.
Each step also leaves every sampling row's token in `next_tokens[table row]`, where the next step
reads it when the host does not have it yet (the overlapped loop).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tts_engine.config import EngineConfig
from tts_engine.engine.cache import RadixCache
from tts_engine.engine.cascade import CascadePlanner
from tts_engine.engine.cuda_graph import DecodeGraphs
from tts_engine.engine.logits_process import apply, lists, needs_processing
from tts_engine.engine.sampler import SampledRow, Sampler
from tts_engine.engine.scheduler import ScheduledBatch
from tts_engine.engine.sequence import Sequence
from tts_engine.engine.upload import upload, upload_one
from tts_engine.kernels.spans import Spans
from tts_engine.models.attention import AttentionMetadata
from tts_engine.models.model import Model


@dataclass
class Prepared:
    """A step's inputs on the host. `ints` are uploaded in one copy, in the order of INTS."""
    batch: ScheduledBatch
    ints: dict[str, list[int]]
    levels: list[tuple[int, int, int]]         # (groups, widest group, longest span) per cascade level
    max_decode_len: int
    max_q_len: int
    fills: list[tuple[int, list[torch.Tensor], int]]    # (row, the tree's slot tensors, length)
    forks: list[tuple[int, int, int]]         # (parent row, siblings, length); their rows in ints
    params: list = field(default_factory=list)          # SamplingParams per sampling row
    uniforms: list[float] = field(default_factory=list)
    top: list[int | None] = field(default_factory=list)
    changes: tuple | None = None                        # logits_process.lists, if any row needs them


@dataclass
class StepOutput:
    rows: list[SampledRow]                 # one per batch.sampling
    kept: torch.Tensor | None              # [len(batch.kept), hidden]
    # [len(batch.sampling), hidden]: the states the rows sampled from, when a row's params ask
    hidden: torch.Tensor | None = None


INTS = ("table_rows", "positions", "slot_mapping", "decode_ids", "prefill_ids", "decode_rows",
        "decode_starts", "decode_lens", "prefill_rows", "prefill_q_start", "prefill_q_lens",
        "prefill_kv_lens", "sample_rows", "logit_rows", "next_rows", "keep_rows", "fork_rows")


class ModelRunner:
    def __init__(self, model: Model, config: EngineConfig, num_slots: int, max_model_len: int):
        cfg = model.cfg
        weight = next(model.parameters())
        dtype, device, max_num_seqs = weight.dtype, weight.device, config.max_num_seqs
        self.model, self.device = model, device
        # A span shared by several decoding sequences is read once for all of them (cascade) when
        # sharers x span tokens reaches EngineConfig.cascade_min_work (None: never). Its default,
        # 2048: benchmarks/bench_kernels.py --cpu (32/8 heads, slots gathered once per step): cascade
        # breaks even at 2k (8 x 256) and pays from 4k (4 x 1024, 16 x 256, 64 x 64); it costs up to
        # 3.6x on small groups. End to end on the CPU beam benchmark (SmolLM2), 2048 and 4096 ran
        # 5-10% faster than 1024 or no cascade (two runs each; this VM's noise is of that order).
        # Re-measure on GPUs.
        self.cascade_min_work = config.cascade_min_work
        self.planner = CascadePlanner(config.cascade_min_work)
        # One tensor for the whole pool: [layers, K/V, slots, kv_heads, head_dim]. The extra last
        # slot belongs to no sequence: padding rows of CUDA-graph batches write there.
        self.kv_cache = torch.zeros(cfg.num_layers, 2, num_slots + 1, cfg.num_kv_heads, cfg.head_dim,
                                    dtype=dtype, device=device)
        self.scratch_slot = num_slots
        # The extra last row is all scratch slots: CUDA-graph padding rows read it.
        width = min(max_model_len, num_slots)
        self.slot_table = torch.zeros(max_num_seqs + 1, width, dtype=torch.int32, device=device)
        self.pad_row = max_num_seqs
        self.slot_table[self.pad_row] = self.scratch_slot
        self.next_tokens = torch.zeros(max_num_seqs + 1, dtype=torch.long, device=device)
        self.graphs: DecodeGraphs | None = None
        self.sampler = Sampler()
        self.table_entries_written = 0     # slot ids uploaded from the host, in all (tree nodes included)
        self.workspace: dict = {}          # the attention backend's buffers, reused step after step
        layers = model.attention_layers()
        if len(layers) != cfg.num_layers:
            raise RuntimeError(f"{len(layers)} attention modules for {cfg.num_layers} layers")
        for i, attn in enumerate(layers):
            attn.k_cache, attn.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]

    # ------------------------------------------------------------ host half
    def prepare(self, batch: ScheduledBatch, eos_token_ids: set[int]) -> Prepared:
        ints = {name: [] for name in INTS}
        decode = batch.decode
        ints["positions"] = positions = [n - 1 for n in batch.decode_lens]
        # the token fed: on the host, or (sampled by the step still running) only on the device
        ints["decode_ids"] = [s.token_ids[n] if n < len(s.token_ids) else -1
                              for s, n in zip(decode, positions)]
        ints["table_rows"] = table_rows = [s.row for s in decode]
        ints["slot_mapping"] = slot_mapping = batch.decode_slots[:]
        nd = len(decode)
        ints["sample_rows"] = list(range(nd))
        ints["decode_rows"] = table_rows[:]
        for c in batch.prefill:
            seq, n = c.seq, c.end - c.start
            ints["prefill_q_start"].append(len(positions) - nd)
            ints["prefill_ids"] += seq.token_ids[c.start:c.end]
            table_rows += [seq.row] * n
            positions += range(c.start, c.end)
            slot_mapping += c.slots
            ints["prefill_rows"].append(seq.row)
            ints["prefill_q_lens"].append(n)
            ints["prefill_kv_lens"].append(c.end)
            ints["keep_rows"] += [len(positions) - c.end + p for p in c.keep]
            if c.samples:
                ints["sample_rows"].append(len(positions) - 1)
        levels, starts = self.cascade_levels(batch.decode)
        ints["decode_starts"] = starts
        ints["decode_lens"] = lens = [n - st for n, st in zip(batch.decode_lens, starts)]
        batch.decode_own = lens
        batch.decode_shared = [(g.end - g.start, g.rows) for groups in levels for g in groups]
        shapes = []
        for k, groups in enumerate(levels):
            width = max(len(g.rows) for g in groups)
            shapes.append((len(groups), width, max(g.end - g.start for g in groups)))
            ints[f"level{k}"] = ([g.table_row for g in groups] + [g.start for g in groups]
                                 + [g.end - g.start for g in groups]
                                 + [r for g in groups for r in g.rows + [-1] * (width - len(g.rows))])
        # sampling rows: decode and prefill rows, then each sibling reads its parent's logits row
        sampling, own = batch.sampling, len(ints["sample_rows"])
        ints["logit_rows"] = list(range(own))
        if batch.forks:
            where = {id(s): i for i, s in enumerate(sampling[:own])}
            ints["logit_rows"] += [where[id(f.parent)] for f in batch.forks for _ in f.siblings]
        ints["next_rows"] = [s.row for s in sampling]
        fills = []
        for row, node in batch.fills:
            values = []
            for n in RadixCache.path(node):
                if n.value is None:      # once per node: later rows on it copy on the device
                    n.value = upload_one(self.device, n.slots, torch.int32)
                    self.table_entries_written += len(n.slots)
                values.append(n.value)
            fills.append((row, values, node.depth))
        forks = [(f.parent.row, len(f.siblings), f.length) for f in batch.forks]
        ints["fork_rows"] = [s.row for f in batch.forks for s in f.siblings]
        self.table_entries_written += len(slot_mapping)
        prep = Prepared(batch, ints, shapes, max(lens, default=0),
                        max(ints["prefill_q_lens"], default=0), fills, forks)
        prep.params = [s.params for s in sampling]
        prep.uniforms = [0.0 if s.params.greedy else s.rng.random() for s in sampling]
        prep.top = [s.params.logprobs for s in sampling]
        if any(needs_processing(s) for s in sampling):
            prep.changes = lists(sampling, eos_token_ids)
        return prep

    def cascade_levels(self, decode: list[Sequence]):
        """Shared spans of the decoding sequences (cascade.CascadePlanner), or none when cascade is
        off or the model has a sliding window."""
        if self.cascade_min_work is None or self.model.cfg.sliding_window is not None:
            return [], [0] * len(decode)
        if self.planner.min_work != self.cascade_min_work:     # (tests change the threshold)
            self.planner = CascadePlanner(self.cascade_min_work)
        return self.planner.plan(decode)

    # ------------------------------------------------------------ device half
    @torch.inference_mode()
    def execute(self, prep: Prepared) -> StepOutput:
        """Run a prepared step; returns its sampled rows on the host and the kept hidden states."""
        names = list(INTS) + [f"level{k}" for k in range(len(prep.levels))]
        t = dict(zip(names, upload(self.device, *(prep.ints[n] for n in names))))
        self._write_table(t, prep)
        fed = t["decode_ids"]
        if -1 in prep.ints["decode_ids"]:
            fed = torch.where(fed >= 0, fed, self.next_tokens.index_select(0, t["decode_rows"]))
        ids = torch.cat([fed, t["prefill_ids"]])
        cascade = []
        for k, (groups, width, longest) in enumerate(prep.levels):
            rows, starts, lens, members = t[f"level{k}"].split([groups, groups, groups, groups * width])
            cascade.append(Spans(rows, starts, lens, longest, members.view(groups, width),
                                 workspace=self.workspace))
        nd = len(prep.batch.decode)
        meta = AttentionMetadata(
            slot_table=self.slot_table, slot_mapping=t["slot_mapping"], num_decode=nd,
            decode=Spans(t["decode_rows"], t["decode_starts"], t["decode_lens"], prep.max_decode_len,
                         workspace=self.workspace),
            cascade_levels=cascade or None, prefill_rows=t["prefill_rows"],
            prefill_q_start=t["prefill_q_start"], prefill_q_lens=t["prefill_q_lens"],
            prefill_kv_lens=t["prefill_kv_lens"], prefill_max_q_len=prep.max_q_len)
        kept = sampled_from = None
        wants_hidden = any(p.return_hidden_states for p in prep.params)   # (then eager: graphs keep logits)
        graphs = self.graphs is not None and not prep.batch.prefill and not wants_hidden
        if graphs and self.graphs.can_run(meta):
            logits = self.graphs.run(ids, t["positions"], meta)
        else:
            hidden = self.model(ids, t["positions"], meta)
            if t["keep_rows"].numel():
                kept = hidden.index_select(0, t["keep_rows"])
            sampled_from = hidden.index_select(0, t["sample_rows"])
            logits = self.model.compute_logits(sampled_from)
        if not prep.params:
            return StepOutput([], kept)
        if prep.batch.forks:
            logits = logits.index_select(0, t["logit_rows"])
            if wants_hidden:
                sampled_from = sampled_from.index_select(0, t["logit_rows"])
        processed = logits if prep.changes is None else apply(logits, prep.changes)
        sampled = self.sampler(processed, prep.params, prep.uniforms, raw=logits)
        self.next_tokens[t["next_rows"]] = sampled.tokens
        rows = sampled.fetch(logits, prep.top)
        for i, r in enumerate(rows):
            if not r.finite:       # the host replaced the token: so must the next step's input
                self.next_tokens[prep.ints["next_rows"][i]] = r.token
        return StepOutput(rows, kept, sampled_from if wants_hidden else None)

    def _write_table(self, t: dict[str, torch.Tensor], prep: Prepared) -> None:
        """The step's new tokens, then rows filled from the tree (which may overwrite a fork parent's
        own copies of tokens the tree already held), then forked rows copied from their parents."""
        if t["slot_mapping"].numel():
            self.slot_table[t["table_rows"], t["positions"]] = t["slot_mapping"].to(torch.int32)
        for row, values, n in prep.fills:
            self.slot_table[row, :n] = values[0] if len(values) == 1 else torch.cat(values)
        done = 0
        for parent, siblings, n in prep.forks:
            rows = t["fork_rows"][done:done + siblings]
            self.slot_table[rows, :n] = self.slot_table[parent, :n]
            done += siblings

    def capture_decode_graphs(self, max_batch_size: int, capture: bool = True) -> None:
        """Capture CUDA graphs of decode steps for batch sizes up to max_batch_size (capture=False:
        run the graphs' static-buffer steps eagerly, which tests them on a CPU)."""
        self.graphs = DecodeGraphs(self.model, self.slot_table, self.pad_row, self.scratch_slot,
                                   max_batch_size, self.device, capture)

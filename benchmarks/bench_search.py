"""Beam search end to end: tts-engine (policy and PRM on the engine) against the same search on
transformers written naively (each beam's whole prefix re-encoded at every step, the PRM re-scoring
every whole prefix), in one run. The search code is the same for both (tts_engine.search); only the
policy and PRM behind it differ. SmolLM2-135M as the policy and, with a random value head in
Skywork's layout, as the PRM; float32 on the CPU.

    python benchmarks/bench_search.py [--problems 10] [--n 16] [--max-steps 5] [--step-tokens 64]

Prints wall time, tokens computed and FLOPs of both, and the PRM's computed tokens against the
unique tokens of everything it scored.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from bench_prm import skywork_smollm2
from tts_engine import LLM, PRM
from tts_engine.flops import decoder_flops
from tts_engine.models.heads import LMHead, ValueHead
from tts_engine.outputs import CompletionOutput, RequestOutput
from tts_engine.search import SearchConfig, beam_search
from tts_engine.tasks import load_dataset
from tts_engine.work import Work

DATA = os.path.join(os.path.dirname(__file__), "../../shared/data/math500.jsonl")


class NaivePolicy:
    """transformers generate behind the search's policy calls: every call re-encodes each whole
    prompt (and, with n samples, n times: generate expands the batch before the prefill)."""

    def __init__(self, folder: str, ours: LLM):
        import transformers
        self.model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
        self.tok, self.cfg, self.max_model_len = ours.get_tokenizer(), ours.engine.model_config, \
            ours.max_model_len
        self.flops = self.tokens = 0

    def get_tokenizer(self):
        return self.tok

    @torch.inference_mode()
    def generate(self, prompts, sampling_params, use_tqdm=False):
        outs = []
        pad = self.tok.eos_token_id
        for prompt, p in zip(prompts, sampling_params):          # a request at a time, n samples each
            ids = prompt["prompt_token_ids"]
            torch.manual_seed(p.seed % (1 << 31))
            seqs = self.model.generate(torch.tensor([ids]), do_sample=True, temperature=p.temperature,
                                       top_p=p.top_p,
                                       top_k=0, num_return_sequences=p.n, max_new_tokens=p.max_tokens,
                                       stop_strings=p.stop or None, tokenizer=self.hf_tok, pad_token_id=pad)
            completions, work = [], Work()
            for k, row in enumerate(seqs[:, len(ids):].tolist()):
                completions.append(self._completion(k, row, p))
                new = len(completions[-1].token_ids)
                flops = decoder_flops(self.cfg, [(0, len(ids))]) + LMHead.flops(self.cfg, new) + sum(
                    decoder_flops(self.cfg, [(len(ids) + t, len(ids) + t + 1)]) for t in range(new - 1))
                work += Work(len(ids), 0, len(ids), new, flops)
            self.flops += work.flops
            self.tokens += work.computed_tokens + work.generated_tokens
            outs.append(RequestOutput("0", None, ids, None, completions, work=work))
        return outs

    def _completion(self, k: int, row: list[int], p) -> CompletionOutput:
        eos = self.tok.eos_token_id
        if eos in row:
            row = row[:row.index(eos) + 1]
        for i in range(1, len(row) + 1):             # up to the first stop string
            text = self.tok.decode(row[:i], skip_special_tokens=True)
            if p.stop and p.stop[0] in text:
                return CompletionOutput(k, text[:text.index(p.stop[0]) + len(p.stop[0])], row[:i], 0.0, None,
                                        "stop", p.stop[0])
        text = self.tok.decode(row, skip_special_tokens=True)
        ended = bool(row) and row[-1] == eos
        return CompletionOutput(k, text, row, 0.0, None, "stop" if ended else "length", None)


class NaivePRM:
    """The value head on transformers' backbone over each whole prefix (search-and-learn's way)."""

    def __init__(self, folder: str, ours: PRM):
        import transformers
        self.model = transformers.LlamaModel.from_pretrained(folder, dtype=torch.float32).eval()
        self.head = ours.engine.model.v_head.summary
        self.family, self.cfg = ours.family, ours.engine.model_config
        self.flops = self.tokens = 0

    @torch.inference_mode()
    def score_with_work(self, questions, trajectories):
        scores = []
        for q, steps in zip(questions, trajectories):
            ids, positions = self.family.encode(q, [s.strip() for s in steps])
            hidden = self.model(torch.tensor([ids])).last_hidden_state[0, positions]
            scores.append(torch.sigmoid(self.head(hidden))[:, 0].tolist())
            self.flops += decoder_flops(self.cfg, [(0, len(ids))]) + ValueHead.flops(self.cfg, len(positions))
            self.tokens += len(ids)
        return scores, [Work() for _ in scores]


class Recording:
    """Passes PRM calls through and keeps what was scored (for the unique-token count)."""

    def __init__(self, prm):
        self.prm, self.scored = prm, []

    def score_with_work(self, questions, trajectories):
        self.scored += [(q, [s.strip() for s in t]) for q, t in zip(questions, trajectories)]
        return self.prm.score_with_work(questions, trajectories)


def unique_tokens(family, scored) -> int:
    """Distinct token prefixes over all scored PRM inputs (up to their last tag): the tokens a
    perfectly incremental scorer must compute."""
    trie, count = {}, 0
    for q, steps in scored:
        ids, positions = family.encode(q, steps)
        node = trie
        for t in ids[:positions[-1] + 1]:
            if t not in node:
                node[t], count = {}, count + 1
            node = node[t]
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=10)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=5)
    ap.add_argument("--step-tokens", type=int, default=64)
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    problems = load_dataset(args.data, args.problems)
    cfg = SearchConfig(n=args.n, beam_width=4, max_steps=args.max_steps, step_tokens=args.step_tokens,
                       prompt_style="qwen", seed=0)
    with tempfile.TemporaryDirectory() as folder:
        skywork_smollm2(folder)
        llm = LLM(folder, dtype="float32", device="cpu")
        prm = PRM(folder, kind="skywork", dtype="float32", device="cpu")
        naive_policy, naive_prm = NaivePolicy(folder, llm), NaivePRM(folder, prm)
        recorded = Recording(prm)
        t = time.perf_counter()
        ours = beam_search(llm, recorded, problems, cfg)
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        theirs = beam_search(naive_policy, naive_prm, problems, cfg)
        theirs_s = time.perf_counter() - t
        keys = ("computed_tokens", "generated_tokens", "flops")
        work = {side: {k: sum(getattr(getattr(r, f"{side}_work"), k) for r in ours) for k in keys}
                for side in ("policy", "prm")}
        unique = unique_tokens(prm.family, recorded.scored)
    acc = lambda results: sum(r.correct["prm_last_max"] for r in results) / len(results)   # noqa: E731
    our_tokens = sum(w["computed_tokens"] + w["generated_tokens"] for w in work.values())
    our_flops = sum(w["flops"] for w in work.values())
    print(f"\nbeam search N={args.n}, M=4, <= {args.max_steps} steps of <= {args.step_tokens} tokens, "
          f"{len(problems)} MATH-500 problems; SmolLM2-135M policy and Skywork-layout PRM, float32, "
          f"{torch.get_num_threads()} threads")
    print(f"{'backend':<34}{'seconds':>9}{'tokens computed':>17}{'TFLOPs':>9}{'accuracy':>10}")
    print(f"{'tts-engine':<34}{ours_s:>9.1f}{our_tokens:>17}{our_flops / 1e12:>9.2f}{acc(ours):>10.2f}")
    print(f"{'transformers, naive':<34}{theirs_s:>9.1f}{naive_policy.tokens + naive_prm.tokens:>17}"
          f"{(naive_policy.flops + naive_prm.flops) / 1e12:>9.2f}{acc(theirs):>10.2f}")
    prm_tokens, policy = work["prm"]["computed_tokens"], work["policy"]
    print(f"speed-up {theirs_s / ours_s:.2f}x; PRM computed {prm_tokens} tokens for {unique} unique "
          f"({prm_tokens / unique:.3f}x); policy generated {policy['generated_tokens']} tokens, "
          f"computed {policy['computed_tokens']} prompt tokens")


if __name__ == "__main__":
    main()

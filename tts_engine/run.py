"""The study: accuracy against FLOPs for policies x PRMs x methods x budgets.

    python -m tts_engine.run --policy DIR [DIR ...] --prm DIR [DIR ...] --dataset FILE|NAME
        --method cot bon beam dvts compute-optimal --n 4 16 64 --out DIR [--limit K] [--seed S] ...

Each problem's result is appended to OUT/results.jsonl as its unit (a few problems of one policy, PRM,
method and N) finishes. OUT/manifest.json records the settings that change a result (seed,
temperature, top-p, beam width, step and token limits, prompt style, dtype, device, PRM kind,
difficulty samples, chunk), the dataset's content hash and each model's identity. Resume: started
again into the same --out with the same settings, the study skips finished units and loses none
(Ctrl-C and kills included); with more methods, budgets, problems or models it extends the folder;
with any other setting it is refused (exit 2) with the list of differences. The summary
(OUT/summary.json, the printed table, OUT/accuracy_vs_flops.png) covers exactly this command's
policies, PRMs, methods, budgets and problems. Difficulty bins come from each policy's pass@1 over
--difficulty-samples samples (OUT/difficulty.jsonl); compute-optimal picks, per estimated bin and
N, the best method and rule on a calibration half of the problems and reports the other half.

With no model and dataset arguments it runs the toy world's study (tts_engine.toy): the shipped small
and large policies with CoT, and the small one with the shipped PRM and best-of-N, beam search and
DVTS at N = 4, 16, 64, over 320 chain-arithmetic problems of mixed difficulty.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace

from tqdm import tqdm

from tts_engine import __version__
from tts_engine.flops import pretraining_flops
from tts_engine.loader import read_json
from tts_engine.prm import KINDS
from tts_engine.replica import Replica, Settings, Unit, model_name
from tts_engine.report import headline, plot, summarize, table
from tts_engine.search import SearchConfig
from tts_engine.study.analysis import apply_table, bin_of, calibration, choose_table
from tts_engine.study.checks import (MAX_N, UsageError, check_dataset, check_device, check_model,
                                     check_options, check_out, check_pretrain_tokens, lock_out)
from tts_engine.study.manifest import Manifest, dataset_identity, model_identity, reconcile, settings_of
from tts_engine.study.store import Store
from tts_engine.tasks.data import Problem
from tts_engine.tasks.prompts import STYLES

ALL_METHODS = ("cot", "bon", "beam", "dvts", "compute-optimal")
NEEDS_PRM = {"bon", "beam", "dvts", "compute-optimal"}
DTYPES = ("auto", "float32", "bfloat16", "float16")


class Help(argparse.RawDescriptionHelpFormatter):
    """The docstring as written, and each option's default where it has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tts_engine.run", description=__doc__, formatter_class=Help)
    ap.add_argument("--policy", nargs="+", help="policy model folders (or .gguf, or pkg:<package>); "
                    "with no --policy, --prm and --dataset: the toy world's study")
    ap.add_argument("--prm", nargs="+", default=[], help="PRM folders")
    ap.add_argument("--prm-kind", default="auto", choices=("auto", *KINDS), help="PRM family")
    ap.add_argument("--dataset", help="a JSONL file (problem, answer[, id, level]) or a cached HF dataset")
    ap.add_argument("--method", nargs="+", choices=ALL_METHODS,
                    help="default: cot bon beam dvts (the toy study adds compute-optimal)")
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
    ap.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (CoT is greedy)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    ap.add_argument("--prompt-style", default="auto", choices=STYLES,
                    help="auto: Meta's MATH prompt for Llama models, the Qwen-Math one otherwise, plain "
                    "text without a chat template")
    ap.add_argument("--difficulty-samples", type=int, default=16,
                    help="samples per problem for its difficulty bin (0: none)")
    ap.add_argument("--pretrain-tokens", nargs="*", default=[], metavar="MODEL=TOKENS",
                    help="training tokens of a model (by folder name), for total FLOPs (default: the "
                    "model folder's training.json)")
    ap.add_argument("--chunk", type=int, help="problems per unit of work (default: 64 for CoT, 256 / N "
                    "otherwise)")
    ap.add_argument("--policy-memory", type=float, default=0.45, help="policy's gpu_memory_utilization")
    ap.add_argument("--prm-memory", type=float, default=0.45, help="PRM's gpu_memory_utilization")
    ap.add_argument("--workers", type=int, help="engine replicas as Ray actors (one GPU each when there "
                    "are GPUs); needs pip install 'tts-engine[ray]'")
    ap.add_argument("--ray-address", help="join this Ray cluster ('auto': the one this node is in)")
    args = ap.parse_args(argv)
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


def toy_study(args: argparse.Namespace) -> None:
    """The toy world's models, and its study problems written to OUT/toy_problems.jsonl."""
    from tts_engine import toy
    from tts_engine.toy.world import study_problems, write_jsonl
    args.policy = [toy.model_path(toy.SMALL), toy.model_path(toy.LARGE)]
    args.prm = [toy.model_path(toy.PRM)]
    args.cot_only = [toy.model_path(toy.LARGE)]
    args.dataset = os.path.join(args.out, "toy_problems.jsonl")
    write_jsonl(args.dataset, study_problems())


@dataclass
class Plan:
    """What the checks produced: the study's problems, the folder's manifest and the device."""
    problems: list[Problem]
    manifest: Manifest
    device: str
    pretrain_tokens: dict[str, int]
    results: Store
    difficulty: Store
    lock: object             # the folder's lock file, held while the study runs


def check(args: argparse.Namespace) -> Plan:
    """Every input checked before a model is loaded, and the folder's manifest reconciled."""
    if args.toy:            # the toy world's models and problems (written into OUT) stand in
        if args.cot_only:
            raise UsageError("--cot-only needs --policy (the toy study's CoT-only baseline is its large "
                             "policy)")
        check_out(args.out)
        toy_study(args)
    check_options(args, NEEDS_PRM)
    check_out(args.out)
    lock = lock_out(args.out)
    try:
        everything, problems = check_dataset(args.dataset, args.limit)
        device = check_device(args.device)
        infos = [check_model(p, "policy", prompt_style=args.prompt_style) for p in args.policy]
        infos += [check_model(p, "prm", args.prm_kind) for p in args.prm]
        names = [model_name(i.path) for i in infos]
        twice = [n for n in names if names.count(n) > 1]
        if twice:
            raise UsageError(f"two models are named {twice[0]!r} (results name models by folder): "
                             f"rename one")
        pretrain_tokens = check_pretrain_tokens(args.pretrain_tokens, names)
        manifest = Manifest(__version__, settings_of(args, device),
                            dataset_identity(args.dataset, everything),
                            {name: model_identity(info) for name, info in zip(names, infos)})
        manifest = reconcile(args.out, manifest)
        results, difficulty = stores(args, manifest.key)
        return Plan(problems, manifest, device, pretrain_tokens, results, difficulty, lock)
    except BaseException:
        lock.close()
        raise


def pretraining(plan: Plan, names: list[str]) -> dict[str, int]:
    """Pre-training FLOPs per model: 6 x parameters x training tokens (--pretrain-tokens, or
    training.json beside the weights: {"training_tokens": ...})."""
    out = {}
    for name in names:
        model = plan.manifest.models[name]
        folder = model["path"] if os.path.isdir(model["path"]) else os.path.dirname(model["path"])
        file = os.path.join(folder, "training.json")
        info = read_json(file) if os.path.isfile(file) else {}
        count = plan.pretrain_tokens.get(name, info.get("training_tokens"))
        if count:
            out[name] = pretraining_flops(int(model["parameters"]), int(count))
    return out


def search_methods(args) -> list[str]:
    return [m for m in ("bon", "beam", "dvts") if m in args.method or "compute-optimal" in args.method]


def plan_units(args, problems: list[Problem], results: Store, difficulty: Store) -> list[Unit]:
    """The units not done yet, grouped by model in the order a single process runs them: per policy
    its CoT, then per PRM its difficulty estimate and each method and N. Unit boundaries are fixed
    chunks of the problem list, so a unit cut by a kill runs again on the same problems."""
    base = SearchConfig(beam_width=args.beam_width, temperature=args.temperature, top_p=args.top_p,
                        max_steps=args.max_steps, step_tokens=args.step_tokens, max_tokens=args.max_tokens,
                        seed=args.seed)

    def chunked(kind, policy, prm, method, cfg, done, size, samples=0) -> list[Unit]:
        fixed = [problems[i:i + size] for i in range(0, len(problems), size)]
        todo = [tuple(p for p in chunk if not done(p.id)) for chunk in fixed]
        return [Unit(kind, policy, prm, method, cfg, chunk, samples) for chunk in todo if chunk]

    def method_units(policy, prm, method, n):
        key = (model_name(policy), prm and model_name(prm), method, n)
        size = args.chunk or (64 if method == "cot" else max(1, 256 // n))
        return chunked("method", policy, prm, method, replace(base, n=n), lambda i: (*key, i) in results.done,
                       size)

    def difficulty_units(policy, prm):
        if args.difficulty_samples < 1:
            return []
        key = (model_name(policy), prm and model_name(prm))
        size = max(1, 256 // args.difficulty_samples)
        return chunked("difficulty", policy, prm, "bon", base, lambda i: (*key, i) in difficulty.done, size,
                       args.difficulty_samples)

    units = []
    for policy in args.policy:
        if "cot" in args.method:
            units += method_units(policy, None, "cot", 1)
        if policy in args.cot_only:
            continue
        if not args.prm:
            units += difficulty_units(policy, None)
        for prm in args.prm if search_methods(args) else []:
            units += difficulty_units(policy, prm)
            units += [u for m in search_methods(args) for n in args.n
                      for u in method_units(policy, prm, m, n)]
    return units


def samples(unit: Unit) -> int:
    """Solutions a unit samples per problem: about the same tokens each, whatever the method."""
    return unit.samples if unit.kind == "difficulty" else 1 if unit.method == "cot" else unit.cfg.n


class Progress:
    """Writes each unit's rows as they come back, and keeps the progress bar (the unit running now;
    time left from the samples left, difficulty estimation included) and each replica's and stage's
    throughput."""

    def __init__(self, units: list[Unit], results: Store, difficulty: Store, key: str):
        self.results, self.difficulty, self.key = results, difficulty, key
        self.bar = tqdm(total=sum(len(u.problems) * samples(u) for u in units), desc="study", unit="sample",
                        smoothing=0, file=sys.stderr)      # smoothing 0: the rate over the whole run
        self.replicas: dict[int, dict] = {}
        self.stages: dict[str, float] = defaultdict(float)
        self.started: dict[str, float] = {}
        self.start = time.perf_counter()

    def starting(self, unit: Unit) -> None:
        self.started[unit.key] = time.perf_counter()
        self.bar.set_description_str(unit.label)

    def __call__(self, unit: Unit, rows: list[dict], replica: int) -> None:
        stats = self.replicas.setdefault(replica, dict(replica=replica, units=0, problems=0, tokens=0))
        rows = [{**r, "settings": self.key, "unit": unit.key, "unit_size": len(rows)} for r in rows]
        (self.difficulty if unit.kind == "difficulty" else self.results).add_unit(rows)
        stats["tokens"] += sum(r["tokens"]["policy"] + r["tokens"]["prm"] for r in rows)
        stats["units"] += 1
        stats["problems"] += len(unit.problems)
        stage = "difficulty" if unit.kind == "difficulty" else unit.method
        self.stages[stage] += time.perf_counter() - self.started.pop(unit.key, self.start)
        self.bar.update(len(unit.problems) * samples(unit))
        total = sum(r["tokens"] for r in self.replicas.values())
        self.bar.set_postfix_str(f"{total / max(time.perf_counter() - self.start, 1e-9):.0f} tok/s")

    def throughput(self) -> dict:
        seconds = time.perf_counter() - self.start
        rows = [{**r, "tokens_per_s": r["tokens"] / seconds} for _, r in sorted(self.replicas.items())]
        return {"replicas": rows, "seconds": seconds, "stage_seconds": dict(self.stages),
                "tokens_per_s": sum(r["tokens"] for r in rows) / max(seconds, 1e-9)}


def stores(args, key: str) -> tuple[Store, Store]:
    return (Store(os.path.join(args.out, "results.jsonl"), key,
                  lambda r: (r["policy"], r["prm"], r["method"], r["n"], r["id"])),
            Store(os.path.join(args.out, "difficulty.jsonl"), key,
                  lambda r: (r["policy"], r["prm"], r["id"])))


def study(args: argparse.Namespace, plan: Plan) -> dict:
    results, difficulty = plan.results, plan.difficulty
    units = plan_units(args, plan.problems, results, difficulty)
    settings = Settings(dtype=args.dtype, device=plan.device, seed=args.seed, prm_kind=args.prm_kind,
                        policy_memory=args.policy_memory, prm_memory=args.prm_memory,
                        prompt_style=args.prompt_style)
    progress = Progress(units, results, difficulty, plan.manifest.key)
    try:
        if args.workers or args.ray_address:
            from tts_engine.ray_replicas import run_units
            run_units(units, settings, bool(args.prm), args.workers or 1, args.ray_address, progress,
                      args.out, on_start=progress.starting)
        else:
            replica = Replica(settings, uses_prm=bool(args.prm))
            for unit in units:
                progress.starting(unit)
                progress(unit, replica.run(unit), 0)
    finally:
        progress.bar.close()
    names = [model_name(p) for p in args.policy + args.prm]
    rows, estimates = this_command(args, plan.problems, results.rows, difficulty.rows)
    return report(args, rows, estimates, pretraining(plan, names), progress.throughput())


def this_command(args, problems: list[Problem], rows: list[dict], estimates: list[dict]
                 ) -> tuple[list[dict], list[dict]]:
    """The rows of this command's policies, PRMs, methods, budgets and problems (a folder may hold
    more, from earlier commands that extended it)."""
    ids = {p.id for p in problems}
    policies = {model_name(p) for p in args.policy}
    cot_only = {model_name(p) for p in args.cot_only}
    prms = {model_name(p) for p in args.prm}
    search = set(search_methods(args))

    def wanted(r):
        if r["id"] not in ids or r["policy"] not in policies:
            return False
        if r["method"] == "cot":
            return "cot" in args.method and r["prm"] is None
        return r["method"] in search and r["policy"] not in cot_only and r["prm"] in prms and r["n"] in args.n

    wanted_estimates = [d for d in estimates if d["id"] in ids and d["policy"] in policies - cot_only
                        and (d["prm"] in prms if d["prm"] is not None else not prms)]
    return [r for r in rows if wanted(r)], wanted_estimates


def report(args, rows: list[dict], estimates: list[dict], pretrain: dict[str, int], throughput: dict) -> dict:
    bins, estimated, first = {}, {}, None
    for d in estimates:
        bins.setdefault((d["policy"], d["id"]), bin_of(d["pass1"]))
        estimated[(d["policy"], d["prm"], d["id"])] = bin_of(d["prm_mean"])
        first = first or d["policy"]
    # a CoT-only baseline has no estimate of its own: the first searched policy's bins place it, so
    # that each panel compares methods on the same problems
    ids = {r["id"] for r in rows}
    rows = [{**r, "difficulty": bins.get((r["policy"], r["id"]), bins.get((first, r["id"])))} for r in rows]
    derived, tables = [], []
    if "compute-optimal" in args.method:
        for (policy, prm) in sorted({(r["policy"], r["prm"]) for r in rows if r["prm"]}):
            mine = [r for r in rows if r["policy"] == policy and r["prm"] == prm]
            est = {i: estimated[(policy, prm, i)] for i in ids if (policy, prm, i) in estimated}
            calib = {i: b for i, b in est.items() if calibration(i)}
            table_ = choose_table([r for r in mine if calibration(r["id"])], calib)
            tables += [{"policy": policy, "prm": prm, "bin": b, "n": n, "method": m, "aggregation": rule}
                       for (b, n), (m, rule) in sorted(table_.items())]
            held = {i: b for i, b in est.items() if not calibration(i)}
            for n in args.n:
                derived += [{**r, "difficulty": bins.get((policy, r["id"]))}
                            for r in apply_table(table_, mine, held, n)]
    summary = summarize(rows + derived, pretrain)
    out = {"rows": summary, "compute_optimal": tables, "pretraining_flops": pretrain,
           "throughput": throughput}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(table(summary))
    print("\n" + "\n".join(headline(summary)))
    for r in throughput["replicas"]:
        print(f"replica {r['replica']}: {r['problems']} problems, {r['tokens_per_s']:.0f} tokens/s")
    print(f"all replicas: {throughput['tokens_per_s']:.0f} tokens/s over {throughput['seconds']:.0f} s")
    if throughput["stage_seconds"]:
        stages = throughput["stage_seconds"].items()
        print("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in stages))
    if tables:
        print("\ncompute-optimal choice (calibration half, estimated difficulty):")
        for t in tables:
            print(f"  {t['policy']} + {t['prm']}: {t['bin']:<7} N={t['n']:<4} "
                  f"{t['method']} / {t['aggregation']}")
    plot(summary, os.path.join(args.out, "accuracy_vs_flops.png"))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        plan = check(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted while checking the inputs: nothing was run", file=sys.stderr)
        return 130
    try:
        study(args, plan)
    except KeyboardInterrupt:
        command = shlex.join(["python", "-m", "tts_engine.run", *argv])
        print(f"\ninterrupted: {len(plan.results.rows)} result rows and {len(plan.difficulty.rows)} "
              f"difficulty rows are saved in {args.out}; the same command resumes: {command}",
              file=sys.stderr)
        return 130
    finally:
        plan.lock.close()         # (a main() called twice in one process must not lock itself out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

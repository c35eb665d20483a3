"""The study: accuracy against FLOPs for policies x PRMs x methods x budgets.

    python -m tts_engine.run --policy DIR [DIR ...] --prm DIR [DIR ...] --dataset FILE|NAME
        --method cot bon beam dvts compute-optimal --n 4 16 64 --out DIR [--limit K] [--seed S] ...

Each problem's result is appended to OUT/results.jsonl as it finishes; killed and started again with
the same command, the study skips finished (policy, prm, method, n, id) rows and loses none (a torn
last line is dropped). Then OUT/summary.json (accuracy with 95% intervals, FLOPs and tokens per
policy, PRM, method, N, aggregation rule and difficulty bin), the same table printed, and
OUT/accuracy_vs_flops.png. Difficulty bins come from each policy's pass@1 over 16 samples (cached in
OUT/difficulty.jsonl); compute-optimal picks, per estimated bin and N, the best method and rule on a
calibration half of the problems and reports the other half.

With no model and dataset arguments it runs the toy world's study (tts_engine.toy): the shipped small
and large policies with CoT, and the small one with the shipped PRM and best-of-N, beam search and
DVTS at N = 4, 16, 64, over 320 chain-arithmetic problems of mixed difficulty.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

from tqdm import tqdm

from tts_engine.flops import pretraining_flops
from tts_engine.loader import read_json, resolve_model_path
from tts_engine.replica import Replica, Settings, Unit, model_name
from tts_engine.report import headline, plot, summarize, table
from tts_engine.search import SearchConfig
from tts_engine.search.compute_optimal import apply_table, calibration, choose_table
from tts_engine.search.difficulty import bin_of
from tts_engine.tasks import load_dataset
from tts_engine.tasks.prompts import STYLES

ALL_METHODS = ("cot", "bon", "beam", "dvts", "compute-optimal")
NEEDS_PRM = {"bon", "beam", "dvts", "compute-optimal"}


class UsageError(Exception):
    """Bad arguments, found before any model is loaded (exit code 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tts_engine.run", description=__doc__.split("\n")[0])
    ap.add_argument("--policy", nargs="+", help="policy model folders (or .gguf, or pkg:<package>); "
                    "with no --policy, --prm and --dataset: the toy world's study")
    ap.add_argument("--prm", nargs="+", default=[], help="PRM folders")
    ap.add_argument("--prm-kind", default="auto", help="PRM family: auto, math-shepherd, rlhflow, ...")
    ap.add_argument("--dataset", help="a JSONL file (problem, answer[, id, level]) or a cached HF dataset")
    ap.add_argument("--method", nargs="+", choices=ALL_METHODS,
                    help="default: cot bon beam dvts (the toy study adds compute-optimal)")
    ap.add_argument("--cot-only", nargs="+", default=[], metavar="DIR",
                    help="policies (of --policy) that run CoT only, as baselines")
    ap.add_argument("--n", nargs="+", type=int, default=[4, 16, 64], help="budgets N")
    ap.add_argument("--out", default="tts_study", help="output folder")
    ap.add_argument("--limit", type=int, help="the first K problems only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--max-steps", type=int, help="default 40 (toy: 12)")
    ap.add_argument("--step-tokens", type=int, help="default 2048 (toy: 32)")
    ap.add_argument("--max-tokens", type=int,
                    help="per solution for CoT and best-of-N; default 8192 (toy: 200)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--prompt-style", default="auto", choices=STYLES)
    ap.add_argument("--difficulty-samples", type=int, default=16,
                    help="samples per problem for its difficulty bin (0: none)")
    ap.add_argument("--pretrain-tokens", nargs="*", default=[], metavar="MODEL=TOKENS",
                    help="training tokens of a model, for total FLOPs (else its folder's training.json)")
    ap.add_argument("--chunk", type=int, help="problems per batch (default: 64 for CoT, 256 / N otherwise)")
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
    args.toy = toy
    return args


def toy_study(args: argparse.Namespace) -> None:
    """The toy world's models, and its study problems written to OUT/toy_problems.jsonl."""
    from tts_engine import toy
    from tts_engine.toy.world import study_problems, write_jsonl
    args.policy = [toy.model_path(toy.SMALL), toy.model_path(toy.LARGE)]
    args.prm = [toy.model_path(toy.PRM)]
    args.cot_only = [toy.model_path(toy.LARGE)]
    os.makedirs(args.out, exist_ok=True)
    args.dataset = os.path.join(args.out, "toy_problems.jsonl")
    write_jsonl(args.dataset, study_problems())


def check(args: argparse.Namespace):
    """Every input checked before a model is loaded; returns the problems."""
    if not args.policy:
        raise UsageError("--policy is required (one or more model folders)")
    stray = [p for p in args.cot_only if p not in args.policy]
    if stray:
        raise UsageError(f"--cot-only {stray[0]!r} is not one of --policy")
    for path in args.policy + args.prm:
        try:
            resolved = resolve_model_path(path)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        if not os.path.exists(resolved):
            raise UsageError(f"model {path!r} does not exist")
    needs = [m for m in args.method if m in NEEDS_PRM]
    if needs and not args.prm:
        raise UsageError(f"--method {' '.join(needs)} needs a PRM: give --prm")
    if any(n < 1 for n in args.n):
        raise UsageError(f"--n must be positive, got {args.n}")
    if {"beam", "dvts", "compute-optimal"} & set(args.method):
        bad = [n for n in args.n if n % args.beam_width]
        if bad:
            raise UsageError(f"N={bad[0]} is not a multiple of --beam-width {args.beam_width} (beam search "
                             f"and DVTS keep N / M beams)")
    if args.chunk is not None and args.chunk < 1:
        raise UsageError(f"--chunk must be >= 1, got {args.chunk}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.workers or args.ray_address:
        import importlib.util
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--workers and --ray-address need Ray: pip install 'tts-engine[ray]'")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if not args.dataset:
        raise UsageError("--dataset is required (a JSONL file or a cached dataset name)")
    try:
        problems = load_dataset(args.dataset, args.limit)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not problems:
        raise UsageError(f"dataset {args.dataset!r} has no problems")
    return problems


def load_rows(path: str) -> list[dict]:
    """The rows of a JSONL file we append to. A torn last line (a kill mid-write) is dropped, and cut
    from the file so that it stays whole."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def append_row(path: str, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Results:
    """results.jsonl: one row per problem, appended and synced as it finishes."""

    def __init__(self, path: str):
        self.path = path
        self.rows = load_rows(path)
        self.done = {self.key(r) for r in self.rows}

    @staticmethod
    def key(r: dict) -> tuple:
        return r["policy"], r["prm"], r["method"], r["n"], r["id"]

    def append(self, row: dict) -> None:
        append_row(self.path, row)
        self.rows.append(row)
        self.done.add(self.key(row))


def pretraining(args, names: dict[str, str], models) -> dict[str, int]:
    """Pre-training FLOPs per model: 6 x parameters x training tokens (flag, or training.json beside
    the weights: {"training_tokens": ..., "parameters": ...})."""
    tokens = {}
    for item in args.pretrain_tokens:
        name, _, value = item.partition("=")
        tokens[name] = int(float(value))
    out = {}
    for path, name in names.items():
        info = {}
        folder = resolve_model_path(path)
        file = os.path.join(folder if os.path.isdir(folder) else os.path.dirname(folder), "training.json")
        if os.path.isfile(file):
            info = read_json(file)
        count = tokens.get(name, info.get("training_tokens"))
        params = info.get("parameters") or models.get(name)
        if count and params:
            out[name] = pretraining_flops(int(params), int(count))
    return out


def chunks(kind: str, policy: str, prm: str | None, method: str, cfg: SearchConfig, todo, size: int,
           samples: int = 0) -> list[Unit]:
    return [Unit(kind, policy, prm, method, cfg, tuple(todo[i:i + size]), samples)
            for i in range(0, len(todo), size)]


def plan(args, problems, results: Results, difficulty_path: str) -> list[Unit]:
    """The study's units not done yet, grouped by model in the order a single process runs them:
    per policy its CoT, then per PRM its difficulty estimate and each method and N."""
    base = SearchConfig(beam_width=args.beam_width, temperature=args.temperature, top_p=args.top_p,
                        max_steps=args.max_steps, step_tokens=args.step_tokens, max_tokens=args.max_tokens,
                        seed=args.seed)
    search = [m for m in ("bon", "beam", "dvts") if m in args.method or "compute-optimal" in args.method]
    estimated = {(r["policy"], r["prm"], r["id"]) for r in load_rows(difficulty_path)}
    units = []

    def method_units(policy, prm, method, n):
        key = (model_name(policy), prm and model_name(prm), method, n)
        todo = [p for p in problems if (*key, p.id) not in results.done]
        size = args.chunk or (64 if method == "cot" else max(1, 256 // n))
        return chunks("method", policy, prm, method, replace(base, n=n), todo, size)

    def difficulty_units(policy, prm):
        if args.difficulty_samples < 1:
            return []
        key = (model_name(policy), prm and model_name(prm))
        todo = [p for p in problems if (*key, p.id) not in estimated]
        size = max(1, 256 // args.difficulty_samples)
        return chunks("difficulty", policy, prm, "bon", base, todo, size, args.difficulty_samples)

    for policy in args.policy:
        if "cot" in args.method:
            units += method_units(policy, None, "cot", 1)
        if policy in args.cot_only:
            continue
        if not args.prm:
            units += difficulty_units(policy, None)
        for prm in args.prm if search else []:
            units += difficulty_units(policy, prm)
            units += [u for method in search for n in args.n for u in method_units(policy, prm, method, n)]
    return units


class Progress:
    """Writes each unit's rows as they come back, and keeps the progress bar and each replica's
    throughput."""

    def __init__(self, units: list[Unit], results: Results, difficulty_path: str):
        self.results, self.difficulty_path = results, difficulty_path
        self.bar = tqdm(total=sum(len(u.problems) for u in units), desc="study", unit="problem",
                        file=sys.stderr)
        self.replicas: dict[int, dict] = {}
        self.start = time.perf_counter()

    def __call__(self, unit: Unit, rows: list[dict], replica: int) -> None:
        stats = self.replicas.setdefault(replica, dict(replica=replica, units=0, problems=0, tokens=0))
        for row in rows:
            if unit.kind == "difficulty":
                append_row(self.difficulty_path, row)
            else:
                self.results.append(row)
                stats["tokens"] += row["tokens"]["policy"] + row["tokens"]["prm"]
        stats["units"] += 1
        stats["problems"] += len(unit.problems)
        self.bar.update(len(unit.problems))
        self.bar.set_description_str(f"{model_name(unit.policy)} {unit.method} N={unit.cfg.n}")
        total = sum(r["tokens"] for r in self.replicas.values())
        self.bar.set_postfix_str(f"{total / max(time.perf_counter() - self.start, 1e-9):.0f} tok/s")

    def throughput(self) -> dict:
        seconds = time.perf_counter() - self.start
        rows = [{**r, "tokens_per_s": r["tokens"] / seconds} for _, r in sorted(self.replicas.items())]
        return {"replicas": rows, "seconds": seconds,
                "tokens_per_s": sum(r["tokens"] for r in rows) / max(seconds, 1e-9)}


def study(args: argparse.Namespace, problems) -> dict:
    os.makedirs(args.out, exist_ok=True)
    results = Results(os.path.join(args.out, "results.jsonl"))
    difficulty_path = os.path.join(args.out, "difficulty.jsonl")
    units = plan(args, problems, results, difficulty_path)
    settings = Settings(dtype=args.dtype, device=args.device, seed=args.seed, prm_kind=args.prm_kind,
                        policy_memory=args.policy_memory, prm_memory=args.prm_memory,
                        prompt_style=args.prompt_style)
    progress = Progress(units, results, difficulty_path)
    if args.workers or args.ray_address:
        from tts_engine.ray_replicas import run_units
        counts = run_units(units, settings, bool(args.prm), args.workers or 1, args.ray_address, progress,
                           args.out)
    else:
        replica = Replica(settings, uses_prm=bool(args.prm))
        for unit in units:
            progress(unit, replica.run(unit), 0)
        counts = replica.parameters()
    progress.bar.close()
    names = {p: model_name(p) for p in args.policy + args.prm}
    pretrain = pretraining(args, names, counts)
    return report(args, results.rows, difficulty_path, pretrain, progress.throughput())


def report(args, rows: list[dict], difficulty_path: str, pretrain: dict[str, int], throughput: dict) -> dict:
    bins, estimated, first = {}, {}, None
    for d in load_rows(difficulty_path):
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
    if tables:
        print("\ncompute-optimal choice (calibration half, estimated difficulty):")
        for t in tables:
            print(f"  {t['policy']} + {t['prm']}: {t['bin']:<7} N={t['n']:<4} "
                  f"{t['method']} / {t['aggregation']}")
    plot(summary, os.path.join(args.out, "accuracy_vs_flops.png"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.toy:
            toy_study(args)
        problems = check(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    study(args, problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())

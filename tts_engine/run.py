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
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

from tqdm import tqdm

from tts_engine.flops import pretraining_flops
from tts_engine.loader import read_json, resolve_model_path
from tts_engine.report import plot, summarize, table
from tts_engine.search import METHODS, SearchConfig
from tts_engine.search.compute_optimal import apply_table, calibration, choose_table
from tts_engine.search.difficulty import bin_of, estimate
from tts_engine.tasks import load_dataset
from tts_engine.tasks.prompts import STYLES, style_for

ALL_METHODS = ("cot", "bon", "beam", "dvts", "compute-optimal")
NEEDS_PRM = {"bon", "beam", "dvts", "compute-optimal"}


class UsageError(Exception):
    """Bad arguments, found before any model is loaded (exit code 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tts_engine.run", description=__doc__.split("\n")[0])
    ap.add_argument("--policy", nargs="+", help="policy model folders (or .gguf, or pkg:<package>)")
    ap.add_argument("--prm", nargs="+", default=[], help="PRM folders")
    ap.add_argument("--prm-kind", default="auto", help="PRM family: auto, math-shepherd, rlhflow, ...")
    ap.add_argument("--dataset", help="a JSONL file (problem, answer[, id, level]) or a cached HF dataset")
    ap.add_argument("--method", nargs="+", default=["cot", "bon", "beam", "dvts"], choices=ALL_METHODS)
    ap.add_argument("--n", nargs="+", type=int, default=[4, 16, 64], help="budgets N")
    ap.add_argument("--out", default="tts_study", help="output folder")
    ap.add_argument("--limit", type=int, help="the first K problems only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--step-tokens", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=8192, help="per solution for CoT and best-of-N")
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
    return ap.parse_args(argv)


def check(args: argparse.Namespace):
    """Every input checked before a model is loaded; returns the problems."""
    if not args.policy:
        raise UsageError("--policy is required (one or more model folders)")
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


def model_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path[4:] if path.startswith("pkg:") else path))


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


def row_of(result, policy: str, prm: str | None, seconds: float, level) -> dict:
    r = result.row()
    work = {"policy": r.pop("policy_work"), "prm": r.pop("prm_work")}
    return {"policy": policy, "prm": prm, **{k: r[k] for k in ("method", "n", "id")}, "level": level,
            "answers": r["answers"], "correct": r["correct"],
            "tokens": {side: w["computed_tokens"] + w["generated_tokens"] for side, w in work.items()},
            "flops": {"policy": work["policy"]["flops"], "prm": work["prm"]["flops"],
                      "saved": work["policy"]["saved_flops"] + work["prm"]["saved_flops"]},
            "work": work, "seconds": seconds, "candidates": r["candidates"]}


def run_method(llm, prm, problems, cfg: SearchConfig, method: str, results: Results, policy: str,
               prm_name: str | None, chunk: int | None = None) -> None:
    todo = [p for p in problems if (policy, prm_name, method, cfg.n, p.id) not in results.done]
    if not todo:
        return
    # each method and budget starts cold, so that its FLOPs are its own and not what another left cached
    llm.reset_prefix_cache()
    if prm is not None:
        prm.reset_prefix_cache()
    chunk = chunk or (64 if method == "cot" else max(1, 256 // cfg.n))
    bar = tqdm(total=len(todo), desc=f"{policy} {method} N={cfg.n}", unit="problem", file=sys.stderr)
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(todo), chunk):
        part, t0 = todo[i:i + chunk], time.perf_counter()
        level = {p.id: p.level for p in part}

        def done(result, part=part):
            nonlocal tokens
            row = row_of(result, policy, prm_name, (time.perf_counter() - t0) / len(part), level[result.id])
            results.append(row)
            tokens += row["tokens"]["policy"] + row["tokens"]["prm"]
            bar.update(1)
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):.0f} tok/s")

        METHODS[method](llm, prm, part, cfg, on_result=done)
    bar.close()


def difficulties(llm, prm, problems, cfg: SearchConfig, samples: int, path: str, policy: str,
                 prm_name: str | None) -> None:
    """Each problem's pass@1 and PRM estimate for this policy (and PRM), cached in difficulty.jsonl."""
    have = {(r["policy"], r["prm"], r["id"]) for r in load_rows(path)}
    todo = [p for p in problems if (policy, prm_name, p.id) not in have]
    if not todo or samples < 1:
        return
    bar = tqdm(total=len(todo), desc=f"{policy} difficulty", unit="problem", file=sys.stderr)

    def done(d, _result):
        append_row(path, {"policy": policy, "prm": prm_name, **asdict(d)})
        bar.update(1)

    for i in range(0, len(todo), max(1, 256 // samples)):
        estimate(llm, prm, todo[i:i + max(1, 256 // samples)], cfg, samples, on_result=done)
    bar.close()


def study(args: argparse.Namespace, problems) -> dict:
    from tts_engine import LLM, PRM
    os.makedirs(args.out, exist_ok=True)
    results = Results(os.path.join(args.out, "results.jsonl"))
    difficulty_path = os.path.join(args.out, "difficulty.jsonl")
    search_methods = [m for m in ("bon", "beam", "dvts")
                      if m in args.method or "compute-optimal" in args.method]
    names = {p: model_name(p) for p in args.policy + args.prm}
    parameters: dict[str, int] = {}
    for policy in args.policy:
        llm = LLM(policy, dtype=args.dtype, device=args.device, seed=args.seed,
                  gpu_memory_utilization=args.policy_memory if args.prm else 0.9)
        parameters[names[policy]] = sum(p.numel() for p in llm.engine.model.parameters())
        style = args.prompt_style if args.prompt_style != "auto" else \
            style_for(policy, llm.get_tokenizer().chat_template is not None)
        base = SearchConfig(beam_width=args.beam_width, temperature=args.temperature, top_p=args.top_p,
                            max_steps=args.max_steps, step_tokens=args.step_tokens,
                            max_tokens=args.max_tokens, seed=args.seed, prompt_style=style)
        if "cot" in args.method:
            run_method(llm, None, problems, SearchConfig(**{**asdict(base), "n": 1}), "cot", results,
                       names[policy], None, args.chunk)
        if not args.prm:
            difficulties(llm, None, problems, base, args.difficulty_samples, difficulty_path, names[policy],
                         None)
        for prm_path in args.prm if search_methods else []:
            prm = PRM(prm_path, kind=args.prm_kind, dtype=args.dtype, device=args.device,
                      gpu_memory_utilization=args.prm_memory)
            parameters[names[prm_path]] = sum(p.numel() for p in prm.engine.model.parameters())
            difficulties(llm, prm, problems, base, args.difficulty_samples, difficulty_path, names[policy],
                         names[prm_path])
            for method in search_methods:
                for n in args.n:
                    run_method(llm, prm, problems, SearchConfig(**{**asdict(base), "n": n}), method, results,
                               names[policy], names[prm_path], args.chunk)
            del prm
        del llm
    return report(args, results.rows, difficulty_path, pretraining(args, names, parameters))


def report(args, rows: list[dict], difficulty_path: str, pretrain: dict[str, int]) -> dict:
    bins, estimated = {}, {}
    for d in load_rows(difficulty_path):
        bins.setdefault((d["policy"], d["id"]), bin_of(d["pass1"]))
        estimated[(d["policy"], d["prm"], d["id"])] = bin_of(d["prm_mean"])
    ids = {r["id"] for r in rows}
    rows = [{**r, "difficulty": bins.get((r["policy"], r["id"]))} for r in rows]
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
    out = {"rows": summary, "compute_optimal": tables, "pretraining_flops": pretrain}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(table(summary))
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
        problems = check(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    study(args, problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A study's report from its rows: the summary (accuracy with a Wilson 95% interval, FLOPs and tokens
per policy, PRM, method, N, aggregation rule and difficulty bin), written to OUT/summary.json and
printed as a table with the paper's headline comparison, and the accuracy-against-FLOPs plot."""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

from tts_engine.flops import eflops
from tts_engine.study.analysis import BIN_ORDER
from tts_engine.study.figures import draw


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval of a proportion: on a few hundred problems, method differences are
    often within it."""
    if n == 0:
        return [0.0, 0.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def summarize(rows: list[dict], pretraining: dict[str, int], gpu: str = "h100") -> list[dict]:
    """rows: results.jsonl rows (with "difficulty"); pretraining: model name -> pre-training FLOPs;
    gpu: whose arithmetic intensity turns bytes moved into eFLOPs (flops.GPUS). Rows written before
    the engine counted bytes have none: their groups' bytes and eFLOPs are None."""
    groups: dict[tuple, list[tuple[dict, str]]] = defaultdict(list)
    for r in rows:
        for rule in r["correct"]:
            for b in ("all", r.get("difficulty")):
                if b is not None:
                    groups[(r["policy"], r["prm"], r["method"], r["n"], rule, b)].append((r, rule))
    out = []
    for (policy, prm, method, n, rule, b), members in groups.items():
        k = sum(int(r["correct"][rule]) for r, _ in members)
        inference = sum(r["flops"]["policy"] + r["flops"]["prm"] for r, _ in members)
        # (fsum: exactly rounded, so the same whatever order the rows come in)
        moved = None if any("bytes" not in r for r, _ in members) else \
            math.fsum(r["bytes"][side] for r, _ in members for side in ("policy", "prm"))
        out.append({
            "policy": policy, "prm": prm, "method": method, "n": n, "aggregation": rule, "difficulty": b,
            "problems": len(members), "accuracy": k / len(members), "accuracy_ci95": wilson(k, len(members)),
            "flops_inference": inference,
            # the paper's Table 4: the policy's pre-training plus inference (policy and PRM); the
            # PRM's own training is reported beside it, not in it (a PRM is trained once and serves
            # every policy, as Qwen2.5-Math-PRM-7B serves the paper's 1B-72B policies)
            "flops_total": inference + pretraining.get(policy, 0),
            "flops_total_with_prm": inference + pretraining.get(policy, 0) + pretraining.get(prm, 0),
            "bytes_inference": moved, "gpu": gpu,
            "eflops_inference": None if moved is None else eflops(inference, moved, gpu),
            "tokens": sum(r["tokens"]["policy"] + r["tokens"]["prm"] for r, _ in members),
            # the budget spent per problem (an adaptive search's samples started; N otherwise)
            "used_per_problem": sum(r.get("used", r["n"]) for r, _ in members) / len(members),
            "seconds": math.fsum(r["seconds"] for r, _ in members)})
    out.sort(key=lambda x: (x["policy"], x["prm"] or "", BIN_ORDER.index(x["difficulty"]), x["method"],
                            x["n"], x["aggregation"]))
    return out


def table(summary: list[dict], rules: tuple[str, ...] = ("majority", "prm_last_max", "prm_last_vote", "table")
          ) -> str:
    """The printed table (all problems; the main aggregation rules)."""
    lines = [f"{'policy':<18}{'prm':<18}{'method':<16}{'N':>4} {'aggregation':<14}{'bin':<7}{'probs':>6}"
             f"{'accuracy':>9}  {'95% CI':<13}{'FLOPs/problem':>14}{'FLOPs total':>13}"
             f"{'+PRM train':>12}{'eFLOPs/prob':>12}{'used':>7}{'s/prob':>8}"]
    for s in summary:
        if s["aggregation"] not in rules:
            continue
        lo, hi = s["accuracy_ci95"]
        lines.append(f"{s['policy'][:17]:<18}{(s['prm'] or '-')[:17]:<18}{s['method']:<16}{s['n']:>4} "
                     f"{s['aggregation']:<14}{s['difficulty']:<7}{s['problems']:>6}{s['accuracy']:>9.3f}  "
                     f"[{lo:.2f}, {hi:.2f}]  {s['flops_inference'] / s['problems']:>13.3g}"
                     f"{s['flops_total']:>13.3g}{s['flops_total_with_prm']:>12.3g}"
                     f"{_per_problem(s, 'eflops_inference'):>12}{s.get('used_per_problem', s['n']):>7.1f}"
                     f"{s['seconds'] / s['problems']:>8.3f}")
    return "\n".join(lines)


def _ci(s: dict) -> str:
    lo, hi = s["accuracy_ci95"]
    return f"[{lo:.2f}, {hi:.2f}]"


def _per_problem(s: dict, key: str) -> str:
    return "-" if s.get(key) is None else f"{s[key] / s['problems']:.3g}"


def headline(summary: list[dict]) -> list[str]:
    """The paper's comparison on all problems: each policy's CoT, and each searched policy's best
    method (any N and rule) against every other policy's CoT, in accuracy and total FLOPs."""
    rows = [s for s in summary if s["difficulty"] == "all"]
    cot = {s["policy"]: s for s in rows if s["method"] == "cot"}
    lines = [f"CoT of {p}: accuracy {s['accuracy']:.3f} {_ci(s)}, total FLOPs {s['flops_total']:.3g}"
             for p, s in cot.items()]
    for policy in sorted({s["policy"] for s in rows if s["method"] != "cot"}):
        mine = [s for s in rows if s["policy"] == policy and s["method"] not in ("cot", "compute-optimal")]
        best = max(mine, key=lambda s: (s["accuracy"], -s["flops_total"]))
        line = (f"best search of {policy}: {best['method']} N={best['n']} {best['aggregation']}, accuracy "
                f"{best['accuracy']:.3f} {_ci(best)}, total FLOPs {best['flops_total']:.3g}")
        for other, s in cot.items():
            if other != policy:
                line += (f"; vs CoT of {other}: {best['accuracy'] - s['accuracy']:+.3f} accuracy at "
                         f"{best['flops_total'] / s['flops_total']:.2f}x its total FLOPs")
        lines.append(line)
    return lines


def publish(out: str, rows: list[dict], choices: list[dict], pretrain: dict[str, int],
            throughput: dict, gpu: str = "h100", rule: str | None = None,
            command: dict | None = None) -> dict:
    """The summary of `rows` written to OUT/summary.json with the compute-optimal choices, the
    pre-training FLOPs and the throughput; printed, the headline and the compute-optimal choices
    first; and drawn (study/figures.py). rule: the one aggregation rule the full table and the
    figures' lines show (default: the main ones in the table, each method's best in the figures);
    command: what the study command covered (kept for a redraw: tts_engine/report.py)."""
    summary = summarize(rows, pretrain, gpu)
    report = {"rows": summary, "compute_optimal": choices, "pretraining_flops": pretrain,
              "throughput": throughput, "gpu": gpu, "command": command}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("\n".join(headline(summary)))
    if choices:
        print("\ncompute-optimal choice (calibration half, estimated difficulty):")
        for t in choices:
            print(f"  {t['policy']} + {t['prm']}: {t['bin']:<7} N={t['n']:<4} "
                  f"{t['method']} / {t['aggregation']}")
    print("\n" + (table(summary, (rule, "table")) if rule else table(summary)))
    print("\n".join(throughput_lines(throughput)))
    draw(out, summary, rows, rule)
    return report


def throughput_lines(throughput: dict) -> list[str]:
    """The printed throughput: per replica, all together, and seconds per stage."""
    lines = [f"replica {r['replica']}: {r['problems']} problems, {r['tokens_per_s']:.0f} tokens/s"
             for r in throughput["replicas"]]
    lines.append(f"all replicas: {throughput['tokens_per_s']:.0f} tokens/s over "
                 f"{throughput['seconds']:.0f} s")
    if throughput["stage_seconds"]:
        stages = throughput["stage_seconds"].items()
        lines.append("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in stages))
    return lines

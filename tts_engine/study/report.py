"""A study's report from its rows: the summary (accuracy with a Wilson 95% interval, FLOPs and tokens
per policy, PRM, method, N, aggregation rule and difficulty bin), written to OUT/summary.json and
printed as a table with the paper's headline comparison, and the accuracy-against-FLOPs plot."""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

from tts_engine.study.analysis import BINS

BIN_ORDER = ("all", *BINS)


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval of a proportion: on a few hundred problems, method differences are
    often within it."""
    if n == 0:
        return [0.0, 0.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def summarize(rows: list[dict], pretraining: dict[str, int]) -> list[dict]:
    """rows: results.jsonl rows (with "difficulty"); pretraining: model name -> pre-training FLOPs."""
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
        out.append({
            "policy": policy, "prm": prm, "method": method, "n": n, "aggregation": rule, "difficulty": b,
            "problems": len(members), "accuracy": k / len(members), "accuracy_ci95": wilson(k, len(members)),
            "flops_inference": inference,
            # the paper's Table 4: the policy's pre-training plus inference (policy and PRM); the
            # PRM's own training is reported beside it, not in it (a PRM is trained once and serves
            # every policy, as Qwen2.5-Math-PRM-7B serves the paper's 1B-72B policies)
            "flops_total": inference + pretraining.get(policy, 0),
            "flops_total_with_prm": inference + pretraining.get(policy, 0) + pretraining.get(prm, 0),
            "tokens": sum(r["tokens"]["policy"] + r["tokens"]["prm"] for r, _ in members),
            "seconds": sum(r["seconds"] for r, _ in members)})
    out.sort(key=lambda x: (x["policy"], x["prm"] or "", BIN_ORDER.index(x["difficulty"]), x["method"],
                            x["n"], x["aggregation"]))
    return out


def table(summary: list[dict], rules: tuple[str, ...] = ("majority", "prm_last_max", "prm_last_vote", "table")
          ) -> str:
    """The printed table (all problems; the main aggregation rules)."""
    lines = [f"{'policy':<18}{'prm':<18}{'method':<16}{'N':>4} {'aggregation':<14}{'bin':<7}{'probs':>6}"
             f"{'accuracy':>9}  {'95% CI':<13}{'FLOPs/problem':>14}{'FLOPs total':>13}"
             f"{'+PRM train':>12}"]
    for s in summary:
        if s["aggregation"] not in rules:
            continue
        lo, hi = s["accuracy_ci95"]
        lines.append(f"{s['policy'][:17]:<18}{(s['prm'] or '-')[:17]:<18}{s['method']:<16}{s['n']:>4} "
                     f"{s['aggregation']:<14}{s['difficulty']:<7}{s['problems']:>6}{s['accuracy']:>9.3f}  "
                     f"[{lo:.2f}, {hi:.2f}]  {s['flops_inference'] / s['problems']:>13.3g}"
                     f"{s['flops_total']:>13.3g}{s['flops_total_with_prm']:>12.3g}")
    return "\n".join(lines)


def headline(summary: list[dict]) -> list[str]:
    """The paper's comparison on all problems: each policy's CoT, and each searched policy's best
    method (any N and rule) against every other policy's CoT, in accuracy and total FLOPs."""
    rows = [s for s in summary if s["difficulty"] == "all"]
    cot = {s["policy"]: s for s in rows if s["method"] == "cot"}
    lines = [f"CoT of {p}: accuracy {s['accuracy']:.3f}, total FLOPs {s['flops_total']:.3g}"
             for p, s in cot.items()]
    for policy in sorted({s["policy"] for s in rows if s["method"] != "cot"}):
        mine = [s for s in rows if s["policy"] == policy and s["method"] not in ("cot", "compute-optimal")]
        best = max(mine, key=lambda s: (s["accuracy"], -s["flops_total"]))
        line = (f"best search of {policy}: {best['method']} N={best['n']} {best['aggregation']}, accuracy "
                f"{best['accuracy']:.3f}, total FLOPs {best['flops_total']:.3g}")
        for other, s in cot.items():
            if other != policy:
                line += (f"; vs CoT of {other}: {best['accuracy'] - s['accuracy']:+.3f} accuracy at "
                         f"{best['flops_total'] / s['flops_total']:.2f}x its total FLOPs")
        lines.append(line)
    return lines


def figure(summary: list[dict]):
    """Accuracy against inference FLOPs per problem (log x): a line per policy x method x aggregation
    through its N, each policy's CoT a point, 95% intervals as error bars; a panel per bin."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bins = [b for b in BIN_ORDER if any(s["difficulty"] == b for s in summary)]
    fig, axes = plt.subplots(1, len(bins), figsize=(5 * len(bins), 4.5), squeeze=False)
    for ax, b in zip(axes[0], bins):
        lines: dict[tuple, list[dict]] = defaultdict(list)
        for s in summary:
            if s["difficulty"] == b:
                lines[(s["policy"], s["prm"], s["method"], s["aggregation"])].append(s)
        for (policy, prm, method, rule), pts in sorted(lines.items(), key=lambda kv: str(kv[0])):
            pts.sort(key=lambda s: s["n"])
            x = [s["flops_inference"] / s["problems"] for s in pts]
            y = [s["accuracy"] for s in pts]
            # (clamped: at 0% or 100% the interval's far end can sit a rounding error past the point)
            err = [[max(0.0, s["accuracy"] - s["accuracy_ci95"][0]) for s in pts],
                   [max(0.0, s["accuracy_ci95"][1] - s["accuracy"]) for s in pts]]
            label = f"{policy} CoT" if method == "cot" else f"{policy} {method} {rule}"
            ax.errorbar(x, y, yerr=err, marker="o" if method == "cot" else ".", capsize=2, label=label,
                        linestyle="none" if method == "cot" else "-", markersize=7 if method == "cot" else 4)
        ax.set_xscale("log")
        ax.set_title(f"difficulty: {b}")
        ax.set_xlabel("inference FLOPs per problem")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=6)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 3), 1, 1))
    plt.close(fig)          # (out of pyplot's list of open figures: a long process keeps none)
    return fig


def plot(summary: list[dict], path: str):
    """The figure, written as a PNG to `path`; returned for a look at what it draws."""
    fig = figure(summary)
    fig.savefig(path, dpi=120)
    return fig


def publish(out: str, rows: list[dict], choices: list[dict], pretrain: dict[str, int],
            throughput: dict) -> dict:
    """The summary of `rows` written to OUT/summary.json with the compute-optimal choices, the
    pre-training FLOPs and the throughput; printed; and plotted to OUT/accuracy_vs_flops.png."""
    summary = summarize(rows, pretrain)
    report = {"rows": summary, "compute_optimal": choices, "pretraining_flops": pretrain,
              "throughput": throughput}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(table(summary))
    print("\n" + "\n".join(headline(summary)))
    print("\n".join(throughput_lines(throughput)))
    if choices:
        print("\ncompute-optimal choice (calibration half, estimated difficulty):")
        for t in choices:
            print(f"  {t['policy']} + {t['prm']}: {t['bin']:<7} N={t['n']:<4} "
                  f"{t['method']} / {t['aggregation']}")
    plot(summary, os.path.join(out, "accuracy_vs_flops.png"))
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

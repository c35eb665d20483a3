"""The study's figures, each answering one question, drawn from the summary (and, for the rule a
line uses, from the rows' calibration half). Each is written to OUT as a PNG and its points as a
CSV beside it (figure, panel, line, x, accuracy, low, high):

- headline: does the small policy with search beat the large one's CoT, at what total FLOPs?
  Accuracy against total FLOPs (the paper's Table 4 view: pre-training plus inference), a line per
  searched method through N with its best rule, each CoT a labelled point, the costliest CoT a
  horizontal reference.
- accuracy_vs_n: how does each method scale with N, by difficulty? A panel per bin, a line per
  method with the rule chosen on the calibration half (named in the legend).
- rules: which aggregation rule suits each method? A panel per method, a line per rule.
- accuracy_vs_eflops: the headline's question with memory traffic costed (Kinetics' eFLOPs of
  inference per problem, for the report's GPU).

A method keeps one colour and marker in every figure; 95% intervals are bands; legends sit outside
the axes.
"""
from __future__ import annotations

import csv
import os
from collections import defaultdict

from tts_engine.study.analysis import BIN_ORDER, SEARCHES, calibration

STYLE = {"cot": ("black", "o"), "bon": ("tab:blue", "s"), "beam": ("tab:orange", "^"),
         "dvts": ("tab:green", "D"), "compute-optimal": ("tab:red", "*"), "bon-adaptive": ("tab:cyan", "s"),
         "dvts-adaptive": ("tab:olive", "D"), "beam-vg": ("tab:brown", "^")}
RULE_COLOURS = ("tab:gray", "tab:blue", "tab:cyan", "tab:orange", "tab:red", "tab:green", "tab:olive",
                "tab:purple", "tab:brown", "tab:pink")


LINESTYLES = ("-", "--", "-.", ":")


def style(method: str) -> tuple[str, str]:
    return STYLE.get(method, ("tab:purple", "x"))


def who(summary: list[dict], policy: str, prm: str | None) -> tuple[str, str]:
    """A line's policy in its label (with its PRM when the study has several) and its line style
    (one per PRM, so that two PRMs' lines of a method differ)."""
    prms = sorted({s["prm"] for s in summary if s["prm"] is not None})
    if len(prms) < 2 or prm is None:
        return policy, "-"
    return f"{policy} + {prm}", LINESTYLES[prms.index(prm) % len(LINESTYLES)]


def best_rules(summary: list[dict]) -> dict[tuple, str]:
    """(policy, prm, method) -> the rule with the highest mean accuracy over its budgets, all problems."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for s in summary:
        if s["difficulty"] == "all" and s["method"] in SEARCHES:
            acc[(s["policy"], s["prm"], s["method"], s["aggregation"])].append(s["accuracy"])
    best: dict[tuple, tuple[float, str]] = {}
    for (policy, prm, method, rule), values in sorted(acc.items()):
        mean = sum(values) / len(values)
        if mean > best.get((policy, prm, method), (-1.0, ""))[0]:
            best[(policy, prm, method)] = (mean, rule)
    return {k: rule for k, (_, rule) in best.items()}


def calibrated_rules(rows: list[dict]) -> dict[tuple, str]:
    """(policy, prm, method) -> the rule with the most correct answers over all budgets on the
    calibration half of the problems (so that the rule is not chosen on the problems it is shown on)."""
    right: dict[tuple, int] = defaultdict(int)
    for r in rows:
        if r["method"] in SEARCHES and calibration(r["id"]):
            for rule, ok in r["correct"].items():
                right[(r["policy"], r["prm"], r["method"], rule)] += int(ok)
    best: dict[tuple, tuple[int, str]] = {}
    for (policy, prm, method, rule), k in sorted(right.items()):
        if k > best.get((policy, prm, method), (-1, ""))[0]:
            best[(policy, prm, method)] = (k, rule)
    return {key: rule for key, (_, rule) in best.items()}


def _line(ax, points: list[dict], x, label: str, colour: str, marker: str, linestyle: str = "-"):
    """A line through the points (sorted by N) with its 95% band; returns its CSV rows' (x, y, lo, hi)."""
    points = sorted(points, key=lambda s: s["n"])
    xs, ys = [x(s) for s in points], [s["accuracy"] for s in points]
    lo, hi = [s["accuracy_ci95"][0] for s in points], [s["accuracy_ci95"][1] for s in points]
    ax.plot(xs, ys, color=colour, marker=marker, linestyle=linestyle, label=label, markersize=5)
    ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)
    return list(zip(xs, ys, lo, hi))


def _cot_points(ax, summary: list[dict], x, data: list, panel: str, figure: str, reference: bool) -> None:
    """Each policy's CoT as a labelled point; with reference, the costliest CoT also as a line."""
    cots = [s for s in summary if s["difficulty"] == "all" and s["method"] == "cot"]
    for s in cots:
        colour, marker = style("cot")
        lo, hi = s["accuracy_ci95"]
        # (clamped: at 0% or 100% the interval's far end can sit a rounding error past the point)
        err = [[max(0.0, s["accuracy"] - lo)], [max(0.0, hi - s["accuracy"])]]
        ax.errorbar([x(s)], [s["accuracy"]], yerr=err, color=colour,
                    marker=marker, linestyle="none", capsize=3, label=f"{s['policy']} CoT")
        ax.annotate(f"{s['policy']} CoT", (x(s), s["accuracy"]), textcoords="offset points", xytext=(6, -12),
                    fontsize=7)
        data.append((figure, panel, f"{s['policy']} CoT", x(s), s["accuracy"], lo, hi))
    if reference and cots:
        top = max(cots, key=lambda s: s["flops_total"])
        ax.axhline(top["accuracy"], color="gray", linestyle="--", linewidth=1,
                   label=f"{top['policy']} CoT (reference)")


def _finish(fig, ax_or_axes, title: str, bottom: float = -0.02) -> None:
    axes = ax_or_axes if isinstance(ax_or_axes, list) else [ax_or_axes]
    for ax in axes:
        ax.set_ylim(bottom, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = {}, {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
            labels.setdefault(lab, lab)
    fig.suptitle(title)
    fig.legend(list(handles.values()), list(labels), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()


def headline_figure(summary: list[dict], rules: dict[tuple, str], x_key: str = "flops_total",
                    x_label: str = "total FLOPs (pre-training + inference)", name: str = "headline"):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    data: list[tuple] = []
    per_problem = x_key == "eflops_inference"

    def x(s):
        return s[x_key] / s["problems"] if per_problem else s[x_key]

    for (policy, prm, method), rule in sorted(rules.items()):
        pts = [s for s in summary if s["difficulty"] == "all" and (s["policy"], s["prm"], s["method"]) ==
               (policy, prm, method) and s["aggregation"] == rule and s.get(x_key) is not None]
        if pts:
            colour, marker = style(method)
            name_of, dash = who(summary, policy, prm)
            label = f"{name_of} {method} ({rule})"
            data += [(name, "all", label, *p) for p in _line(ax, pts, x, label, colour, marker, dash)]
    _cot_points(ax, [s for s in summary if s.get(x_key) is not None], x, data, "all", name, reference=True)
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy (all problems)")
    title = ("Search with a small policy against the large policy's CoT" if name == "headline" else
             "The same, with memory traffic costed (eFLOPs)")
    lows = [row[5] for row in data]
    _finish(fig, ax, title, max(-0.02, min(lows, default=0.0) - 0.05))      # (zoomed on what it draws)
    return fig, data


def n_figure(summary: list[dict], rules: dict[tuple, str]):
    import matplotlib.pyplot as plt
    bins = [b for b in BIN_ORDER if any(s["difficulty"] == b for s in summary)]
    if not bins:
        return None, []
    fig, axes = plt.subplots(1, len(bins), figsize=(3.6 * len(bins), 3.8), squeeze=False, sharey=True)
    data: list[tuple] = []
    for ax, b in zip(axes[0], bins):
        for (policy, prm, method), rule in sorted(rules.items()):
            pts = [s for s in summary if s["difficulty"] == b and s["aggregation"] == rule and
                   (s["policy"], s["prm"], s["method"]) == (policy, prm, method)]
            if pts:
                colour, marker = style(method)
                name_of, dash = who(summary, policy, prm)
                label = f"{name_of} {method} ({rule})"
                data += [("accuracy_vs_n", b, label, *p) for p in _line(ax, pts, lambda s: s["n"], label,
                                                                        colour, marker, dash)]
        optimal = [s for s in summary if s["difficulty"] == b and s["method"] == "compute-optimal"]
        for policy, prm in sorted({(s["policy"], s["prm"]) for s in optimal}):
            colour, marker = style("compute-optimal")
            name_of, dash = who(summary, policy, prm)
            label = f"{name_of} compute-optimal (held-out half)"
            mine = [s for s in optimal if (s["policy"], s["prm"]) == (policy, prm)]
            data += [("accuracy_vs_n", b, label, *p) for p in _line(ax, mine, lambda s: s["n"], label, colour,
                                                                    marker, dash)]
        for s in (s for s in summary if s["difficulty"] == b and s["method"] == "cot"):
            ax.axhline(s["accuracy"], color="black", linestyle=":", linewidth=1, label=f"{s['policy']} CoT")
            data.append(("accuracy_vs_n", b, f"{s['policy']} CoT", None, s["accuracy"], *s["accuracy_ci95"]))
        ax.set_xscale("log", base=2)
        ax.set_title(f"difficulty: {b}")
        ax.set_xlabel("budget N")
    axes[0][0].set_ylabel("accuracy")
    _finish(fig, list(axes[0]), "Accuracy against the budget N (rule chosen on the calibration half)")
    return fig, data


def rules_figure(summary: list[dict]):
    import matplotlib.pyplot as plt
    methods = [m for m in SEARCHES if any(s["method"] == m for s in summary)]
    if not methods:
        return None, []
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.8), squeeze=False, sharey=True)
    rules = sorted({s["aggregation"] for s in summary if s["method"] in SEARCHES})
    data: list[tuple] = []
    for ax, method in zip(axes[0], methods):
        lines: dict[tuple, list[dict]] = defaultdict(list)
        for s in summary:
            if s["difficulty"] == "all" and s["method"] == method:
                lines[(s["policy"], s["prm"], s["aggregation"])].append(s)
        for (policy, prm, rule), pts in sorted(lines.items(), key=lambda kv: str(kv[0])):
            colour = RULE_COLOURS[rules.index(rule) % len(RULE_COLOURS)]
            name_of, dash = who(summary, policy, prm)
            label = rule if len({k[:2] for k in lines}) == 1 else f"{name_of} {rule}"
            drawn = _line(ax, pts, lambda s: s["n"], label, colour, ".", dash)
            data += [("rules", method, label, *p) for p in drawn]
        ax.set_xscale("log", base=2)
        ax.set_title(method)
        ax.set_xlabel("budget N")
    axes[0][0].set_ylabel("accuracy (all problems)")
    _finish(fig, list(axes[0]), "Aggregation rules compared, per method")
    return fig, data


def draw(out: str, summary: list[dict], rows: list[dict], rule: str | None = None) -> dict[str, object]:
    """Every figure written to OUT (PNG and CSV); returns them by name (closed, for a look at what
    they draw). rule: every method's line uses this aggregation rule (as the paper's figures fix one),
    instead of its best one (headline) or the calibration half's (by N)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    best = best_rules(summary)
    by_n = {**best, **calibrated_rules(rows)}      # (a method without calibration rows keeps its best)
    if rule is not None:
        best = by_n = {key: rule for key in best}
    figures = {"headline": headline_figure(summary, best),
               "accuracy_vs_n": n_figure(summary, by_n),
               "rules": rules_figure(summary),
               "accuracy_vs_eflops": headline_figure(summary, best, "eflops_inference",
                                                     "inference eFLOPs per problem", "accuracy_vs_eflops")
               if any(s.get("eflops_inference") is not None for s in summary) else (None, [])}
    drawn = {}
    for name, (fig, data) in figures.items():
        if fig is None:                  # (nothing to draw: none left from an earlier command either)
            for ext in ("png", "csv"):
                if os.path.exists(path := os.path.join(out, f"{name}.{ext}")):
                    os.remove(path)
            continue
        fig.savefig(os.path.join(out, f"{name}.png"), dpi=120, bbox_inches="tight")
        plt.close(fig)
        with open(os.path.join(out, f"{name}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("figure", "panel", "line", "x", "accuracy", "low", "high"))
            w.writerows(data)
        drawn[name] = fig
    return drawn

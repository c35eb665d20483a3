"""Redraw a study's report from its folder, without loading a model:

    python -m tts_engine.report OUT [--gpu h100] [--rule RULE]

reads OUT/results.jsonl and OUT/difficulty.jsonl (the rows the study's last command covered), and
from the study's own OUT/summary.json that command, the pre-training FLOPs, the throughput and the
budgets compute-optimal was asked for; writes OUT/summary.json and the figures again and prints
the tables. With the study's own settings it reproduces the study's summary exactly; --gpu costs
memory traffic for another GPU's arithmetic intensity (eFLOPs), --rule draws every method with one
aggregation rule.
"""
from __future__ import annotations

import argparse
import os
import sys

from tts_engine.flops import GPUS
from tts_engine.loader import read_json
from tts_engine.study.analysis import analyse, select
from tts_engine.study.checks import UsageError
from tts_engine.study.report import publish
from tts_engine.study.store import saved_rows


def redraw(out: str, gpu: str | None = None, rule: str | None = None) -> dict:
    """The report of the rows in OUT as the study's last command wrote it: the rows it covered
    (every row when its summary.json does not say), its GPU unless gpu is given."""
    path = os.path.join(out, "summary.json")
    before = read_json(path) if os.path.isfile(path) else {}
    if not before:
        print(f"note: no summary.json in {out}: pre-training FLOPs, throughput and compute-optimal are "
              f"left out, and every row is reported", file=sys.stderr)
    rows, estimates = saved_rows(out)
    if before.get("command"):
        rows, estimates = select(rows, estimates, before["command"])
    if not rows:
        raise ValueError(f"{out}: no result rows to report")
    rules = {r for row in rows for r in row["correct"]}
    if rule is not None and rule not in rules:
        raise ValueError(f"--rule {rule!r} is none of the rules of the rows reported "
                         f"({', '.join(sorted(rules))})")
    rows, choices = analyse(rows, estimates, sorted({c["n"] for c in before.get("compute_optimal", [])}))
    throughput = before.get("throughput") or {"replicas": [], "tokens_per_s": 0.0, "seconds": 0.0,
                                              "stage_seconds": {}}
    if gpu is None:
        gpu = before.get("gpu", "h100")
        if gpu not in GPUS:
            print(f"note: summary.json's gpu {gpu!r} is not one this report knows: h100 instead",
                  file=sys.stderr)
            gpu = "h100"
    return publish(out, rows, choices, before.get("pretraining_flops", {}), throughput, gpu, rule,
                   before.get("command"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="a study's output folder (with results.jsonl)")
    ap.add_argument("--gpu", choices=sorted(GPUS),
                    help="the GPU whose FLOPs per byte cost the bytes moved (default: the study's)")
    ap.add_argument("--rule", help="one aggregation rule for every method's line and the full table "
                    "(default: each method's best in the figures; majority, prm_last_max, prm_last_vote "
                    "and compute-optimal's in the table)")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.out, "results.jsonl")):
        print(f"error: {args.out!r} holds no results.jsonl (not a study's folder?)", file=sys.stderr)
        return 2
    try:
        redraw(args.out, args.gpu, args.rule)
    except (ValueError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, AttributeError) as e:      # rows or a summary not of a study's shape
        print(f"error: {args.out}: its results.jsonl or summary.json is not a study's ({type(e).__name__}: "
              f"{e})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

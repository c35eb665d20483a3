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
(OUT/summary.json, the printed headline and table, the figures OUT/*.png with their OUT/*.csv)
covers exactly this command's
policies, PRMs, methods, budgets and problems. Difficulty bins come from each policy's pass@1 over
--difficulty-samples samples (OUT/difficulty.jsonl); compute-optimal picks, per estimated bin and
N, the best method and rule on a calibration half of the problems and reports the other half.

With no model and dataset arguments it runs the toy world's study (tts_engine.toy): the shipped small
and large policies with CoT, and the small one with the shipped PRM and best-of-N, beam search,
DVTS, their adaptive and verify-every-g variants at N = 4, 16, 64, over 320 chain-arithmetic
problems of mixed difficulty.
"""
from __future__ import annotations

import shlex
import sys

from tts_engine.replica import Replica, Settings, model_name
from tts_engine.study.analysis import analyse, select
from tts_engine.study.args import parse_args
from tts_engine.study.checks import UsageError
from tts_engine.study.plan import Plan, plan_units, prepare, this_command
from tts_engine.study.progress import Progress
from tts_engine.study.report import publish


def study(args, plan: Plan) -> dict:
    """Run the units not done yet (in this process, or on Ray replicas), then report this command's
    rows: binned by difficulty, with compute-optimal's picks when asked for."""
    units = plan_units(args, plan)
    settings = Settings(dtype=args.dtype, device=plan.device, seed=args.seed, prm_kind=args.prm_kind,
                        policy_memory=args.policy_memory, prm_memory=args.prm_memory,
                        prompt_style=args.prompt_style)
    progress = Progress(units, plan.results, plan.difficulty, plan.manifest.key)
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
    command = this_command(args, plan)
    rows, estimates = select(plan.results.rows, plan.difficulty.rows, command)
    rows, choices = analyse(rows, estimates, args.n if "compute-optimal" in args.method else [])
    pretrain = plan.pretraining_flops([model_name(p) for p in args.policy + args.prm])
    return publish(args.out, rows, choices, pretrain, progress.throughput(), args.gpu, command=command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv, __doc__)
    try:
        plan = prepare(args)
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

"""What a study command asks for: its inputs checked and its folder opened (the Plan), the units of
work not done yet, the rows it covers, and its models' pre-training FLOPs."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace

from tts_engine import __version__
from tts_engine.flops import pretraining_flops
from tts_engine.replica import Unit, model_name
from tts_engine.search import SearchConfig
from tts_engine.study.analysis import PAPER_SEARCHES, SEARCHES
from tts_engine.study.args import NEEDS_PRM
from tts_engine.study.checks import (UsageError, check_dataset, check_device, check_model, check_options,
                                     check_out, check_pretrain_tokens, check_training_json, lock_out)
from tts_engine.study.manifest import Manifest, dataset_identity, model_identity, reconcile, settings_of
from tts_engine.study.store import Store, open_stores
from tts_engine.tasks.data import Problem


@dataclass
class Plan:
    """What the checks produced: the study's problems, the folder's manifest and the device."""
    problems: list[Problem]
    manifest: Manifest
    device: str
    pretrain_tokens: dict[str, int]   # per model: --pretrain-tokens, else its training.json
    results: Store
    difficulty: Store
    lock: object             # the folder's lock file, held while the study runs

    def pretraining_flops(self, names: list[str]) -> dict[str, int]:
        """Pre-training FLOPs per model whose training tokens are known: 6 x parameters x tokens."""
        models, tokens = self.manifest.models, self.pretrain_tokens
        return {name: pretraining_flops(int(models[name]["parameters"]), tokens[name])
                for name in names if name in tokens}


def toy_inputs(args: argparse.Namespace) -> None:
    """The toy world's models, and its study problems written to OUT/toy_problems.jsonl."""
    from tts_engine import toy
    from tts_engine.toy.world import study_problems, write_jsonl
    args.policy = [toy.model_path(toy.SMALL), toy.model_path(toy.LARGE)]
    args.prm = [toy.model_path(toy.PRM)]
    args.cot_only = [toy.model_path(toy.LARGE)]
    args.dataset = os.path.join(args.out, "toy_problems.jsonl")
    write_jsonl(args.dataset, study_problems())


def prepare(args: argparse.Namespace) -> Plan:
    """Every input checked before a model is loaded, the folder locked and its manifest reconciled."""
    if args.toy:            # the toy world's models and problems (written into OUT) stand in
        if args.cot_only:
            raise UsageError("--cot-only needs --policy (the toy study's CoT-only baseline is its large "
                             "policy)")
        check_out(args.out)
        toy_inputs(args)
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
        for name, info in zip(names, infos):          # (--pretrain-tokens first, else training.json)
            if name not in pretrain_tokens and (count := check_training_json(info)) is not None:
                pretrain_tokens[name] = count
        manifest = Manifest(__version__, settings_of(args, device),
                            dataset_identity(args.dataset, everything),
                            {name: model_identity(info) for name, info in zip(names, infos)})
        manifest = reconcile(args.out, manifest)
        results, difficulty = open_stores(args.out, manifest.key)
        return Plan(problems, manifest, device, pretrain_tokens, results, difficulty, lock)
    except BaseException:
        lock.close()
        raise


def search_methods(args) -> list[str]:
    """The searches run: those asked for, and all three when compute-optimal picks among them."""
    optimal = "compute-optimal" in args.method
    return [m for m in SEARCHES if m in args.method or (optimal and m in PAPER_SEARCHES)]


def in_flight(args, method: str, n: int) -> int:
    """Samples of a problem that run at once: N, or an adaptive search's wave (of samples, or of
    subtrees of M samples each). A unit holds about 256 of them."""
    wave = {"bon-adaptive": args.wave, "dvts-adaptive": args.wave * args.beam_width}.get(method)
    return min(n, wave) if wave else n


def plan_units(args, plan: Plan) -> list[Unit]:
    """The units not done yet, grouped by model in the order a single process runs them: per policy
    its CoT, then per PRM its difficulty estimate and each method and N. Unit boundaries are fixed
    chunks of the problem list, so a unit cut by a kill runs again on the same problems."""
    problems = plan.problems
    base = SearchConfig(beam_width=args.beam_width, temperature=args.temperature, top_p=args.top_p,
                        max_steps=args.max_steps, step_tokens=args.step_tokens, max_tokens=args.max_tokens,
                        seed=args.seed, verify_every=args.verify_every, reject_every=args.reject_every,
                        reject_margin=args.reject_margin, stop_at=args.stop_at, wave=args.wave)

    def chunked(kind, policy, prm, method, cfg, done, size, samples=0) -> list[Unit]:
        fixed = [problems[i:i + size] for i in range(0, len(problems), size)]
        todo = [tuple(p for p in chunk if not done(p.id)) for chunk in fixed]
        return [Unit(kind, policy, prm, method, cfg, chunk, samples) for chunk in todo if chunk]

    def method_units(policy, prm, method, n):
        key = (model_name(policy), prm and model_name(prm), method, n)
        size = args.chunk or (64 if method == "cot" else max(1, 256 // in_flight(args, method, n)))
        return chunked("method", policy, prm, method, replace(base, n=n),
                       lambda i: (*key, i) in plan.results.done, size)

    def difficulty_units(policy, prm):
        if args.difficulty_samples < 1:
            return []
        key = (model_name(policy), prm and model_name(prm))
        size = max(1, 256 // args.difficulty_samples)
        return chunked("difficulty", policy, prm, "bon", base, lambda i: (*key, i) in plan.difficulty.done,
                       size, args.difficulty_samples)

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


def this_command(args, plan: Plan) -> dict:
    """What this command covers (a folder may hold more, from earlier commands that extended it):
    its problems, policies, PRMs, methods and budgets, as analysis.select reads them (the report
    keeps it in summary.json, so that a redraw covers the same rows)."""
    return {"ids": sorted(p.id for p in plan.problems),
            "policies": sorted(model_name(p) for p in args.policy),
            "cot_only": sorted(model_name(p) for p in args.cot_only),
            "prms": sorted(model_name(p) for p in args.prm), "cot": "cot" in args.method,
            "searches": search_methods(args), "n": sorted(args.n)}

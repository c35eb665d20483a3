"""One engine replica of a study: a policy and a PRM on one device, running units of work.

A unit is a small chunk of problems for one (policy, PRM, method, N), or for one policy's difficulty
estimate. It starts with cold prefix caches, so that its rows (answers, tokens, FLOPs) depend only on
the unit, never on what ran before it or on which replica ran it: a study gives the same rows in one
process or spread over many (python -m tts_engine.run --workers K)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace

from tts_engine.search import METHODS, SearchConfig
from tts_engine.search.difficulty import estimate
from tts_engine.tasks.data import Problem
from tts_engine.tasks.prompts import style_for


def model_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path[4:] if path.startswith("pkg:") else path))


@dataclass(frozen=True)
class Settings:
    """How a replica loads its models."""
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    prm_kind: str = "auto"
    policy_memory: float = 0.45
    prm_memory: float = 0.45
    prompt_style: str = "auto"


@dataclass(frozen=True)
class Unit:
    kind: str                     # "method" (results.jsonl rows) or "difficulty" (difficulty.jsonl rows)
    policy: str                   # model paths
    prm: str | None
    method: str
    cfg: SearchConfig
    problems: tuple[Problem, ...]
    samples: int = 0              # difficulty: samples per problem

    @property
    def key(self) -> str:
        """The unit's identity: what it runs, on which problems (its rows carry it)."""
        what = [self.kind, model_name(self.policy), self.prm and model_name(self.prm), self.method,
                self.cfg.n, self.samples, [p.id for p in self.problems]]
        return hashlib.blake2b(json.dumps(what).encode(), digest_size=8).hexdigest()

    @property
    def label(self) -> str:
        what = "difficulty" if self.kind == "difficulty" else f"{self.method} N={self.cfg.n}"
        return f"{model_name(self.policy)} {what}, {len(self.problems)} problems"


def row_of(result, policy: str, prm: str | None, seconds: float, level) -> dict:
    r = result.row()
    work = {"policy": r.pop("policy_work"), "prm": r.pop("prm_work")}
    return {"policy": policy, "prm": prm, **{k: r[k] for k in ("method", "n", "id")}, "level": level,
            "answers": r["answers"], "correct": r["correct"],
            "tokens": {side: w["computed_tokens"] + w["generated_tokens"] for side, w in work.items()},
            "flops": {"policy": work["policy"]["flops"], "prm": work["prm"]["flops"],
                      "saved": work["policy"]["saved_flops"] + work["prm"]["saved_flops"]},
            "bytes": {"policy": result.policy_work.bytes, "prm": result.prm_work.bytes},
            "work": work, "seconds": seconds, "used": r["used"], "candidates": r["candidates"]}


class Replica:
    """Keeps the last policy and PRM it loaded (a study's units come grouped by model)."""

    def __init__(self, settings: Settings, uses_prm: bool = True):
        self.settings, self.uses_prm = settings, uses_prm
        self.llm = self.prm = None
        self.llm_path = self.prm_path = None

    def pid(self) -> int:
        return os.getpid()

    def _load(self, policy: str, prm: str | None) -> None:
        from tts_engine import LLM, PRM
        s = self.settings
        if policy != self.llm_path:
            self.llm = None
            self.llm = LLM(policy, dtype=s.dtype, device=s.device, seed=s.seed,
                           gpu_memory_utilization=s.policy_memory if self.uses_prm else 0.9)
            self.llm_path = policy
        if prm is not None and prm != self.prm_path:
            self.prm = None
            self.prm = PRM(prm, kind=s.prm_kind, dtype=s.dtype, device=s.device,
                           gpu_memory_utilization=s.prm_memory)
            self.prm_path = prm

    def style(self) -> str:
        if self.settings.prompt_style != "auto":
            return self.settings.prompt_style
        return style_for(self.llm_path, self.llm.get_tokenizer().chat_template is not None)

    def run(self, unit: Unit) -> list[dict]:
        """The unit's rows, in the order its problems finished."""
        self._load(unit.policy, unit.prm)
        prm = self.prm if unit.prm is not None else None
        # cold caches: a unit's FLOPs are its own, whatever this replica ran before
        self.llm.reset_prefix_cache()
        if prm is not None:
            prm.reset_prefix_cache()
        cfg = replace(unit.cfg, prompt_style=self.style())
        policy, prm_name = model_name(unit.policy), unit.prm and model_name(unit.prm)
        rows, start = [], time.perf_counter()
        if unit.kind == "difficulty":
            def measured(d, result):
                work = {"policy": result.policy_work, "prm": result.prm_work}
                rows.append({"policy": policy, "prm": prm_name, **asdict(d),
                             "tokens": {side: w.computed_tokens + w.generated_tokens
                                        for side, w in work.items()}})
            estimate(self.llm, prm, list(unit.problems), cfg, unit.samples, on_result=measured)
            return rows
        level = {p.id: p.level for p in unit.problems}
        results = []
        METHODS[unit.method](self.llm, prm, list(unit.problems), cfg, on_result=results.append)
        # each row's share of the unit's wall time (a problem's own latency would undercount a
        # search whose results come out early: the unit ran until its last problem ended)
        seconds = (time.perf_counter() - start) / len(unit.problems)
        return [row_of(r, policy, prm_name, seconds, level[r.id]) for r in results]

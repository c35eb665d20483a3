"""A study's units on K engine replicas, Ray actors (python -m tts_engine.run --workers K
[--ray-address ADDR]). Imported only when those flags are given; Ray is an optional extra.

Units wait in one queue and go to whichever replica is idle, so a fast replica takes more. Each
unit's rows come back to the driver, which alone writes the files. A replica that dies (a killed
process, out of memory) has its unit queued again for the others, and Ray restarts it; an exception
raised by our own code in a unit is not retried, it stops the study with its message."""
from __future__ import annotations

import json
import os
from collections import deque
from typing import Callable

from tts_engine.replica import Replica, Settings, Unit

MAX_UNIT_RETRIES = 3          # a unit that kills its replica this often is a bug, not bad luck


def run_units(units: list[Unit], settings: Settings, uses_prm: bool, workers: int, address: str | None,
              sink: Callable[[Unit, list[dict], int], None], out: str,
              on_start: Callable[[Unit], None] = lambda unit: None) -> None:
    """Runs every unit once: on_start(unit) as it goes to a replica, sink(unit, rows, replica) as it
    finishes. OUT/replicas.json lists the replicas' process ids (for operators and tests). The
    replicas are killed on the way out, whatever ends the run (Ctrl-C included)."""
    import ray
    import torch
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                     object_store_memory=200 * 2 ** 20)
    gpus = 1 if torch.cuda.is_available() else 0
    actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=-1, max_task_retries=0)(Replica)
    replicas = [actor.remote(settings, uses_prm) for _ in range(workers)]
    try:
        _write_pids(out, ray.get([r.pid.remote() for r in replicas]))
        queue, running, idle = deque(units), {}, list(range(workers))
        retries: dict[int, int] = {}
        while queue or running:
            while queue and idle:
                i, unit = idle.pop(0), queue.popleft()
                on_start(unit)
                running[replicas[i].run.remote(unit)] = (i, unit)
            ready, _ = ray.wait(list(running), num_returns=1)
            i, unit = running.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                retries[id(unit)] = retries.get(id(unit), 0) + 1
                if retries[id(unit)] > MAX_UNIT_RETRIES:
                    raise RuntimeError(f"a unit ({unit.label}) killed its replica {MAX_UNIT_RETRIES + 1} "
                                       f"times: {e}") from None
                queue.appendleft(unit)           # to the next idle replica; Ray restarts this one
                idle.append(i)
                continue
            sink(unit, rows, i)
            idle.append(i)
    finally:
        for r in replicas:
            ray.kill(r)


def _write_pids(out: str, pids: list[int]) -> None:
    with open(os.path.join(out, "replicas.json"), "w") as f:
        json.dump({"pids": pids}, f)

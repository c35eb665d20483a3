"""How many variants of the decode kernels Triton would compile over a simulation of random step
shapes (batch sizes, context lengths, cascade levels), on a machine without a GPU: each launch goes
to Triton's own argument specialization for an sm_90 target (what it keys its kernel cache on)
instead of to the compiler. Prints {"partial": n, "reduce": n} as JSON.

    python tests/triton_variants.py [steps]      # run by tests/test_triton_variants.py

Needs a process without TRITON_INTERPRET (the interpreter does not specialize).
"""
from __future__ import annotations

import json
import random
import sys

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
from triton.runtime.jit import create_function_from_signature

from tts_engine.kernels import attention_triton as at
from tts_engine.kernels.spans import Spans

try:
    from tts_engine.engine.upload import upload
except ImportError:      # code before upload.py: the runner's plain int64 upload
    def upload(device, *lists):
        flat = [x for xs in lists for x in xs]
        return torch.tensor(flat, dtype=torch.long, device=device).split([len(xs) for xs in lists])

BACKEND = make_backend(GPUTarget("cuda", 90, 32))
HEADS, KV_HEADS, DIM = 32, 8, 64          # Llama-3.2-1B


class Recorder:
    """Stands in for a JIT kernel: `kernel[grid](*args)` records the specialization key."""

    def __init__(self, kernel):
        self.binder = create_function_from_signature(kernel.signature, kernel.params, BACKEND)
        self.keys: set[str] = set()

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _, specialization, options = self.binder(*args, **kwargs)
            self.keys.add(repr(specialization) + repr(sorted(options.items())))
        return launch


def random_step(rng: random.Random, table: torch.Tensor):
    """Arguments of one decode step as the runner builds them: own spans of `b` rows and up to three
    cascade levels of disjoint groups of rows, all integers from one upload."""
    b = rng.randint(1, 256)
    lens = [rng.randint(1, 4096) for _ in range(b)]
    levels = []
    for _ in range(rng.randint(0, 3) if b >= 2 else 0):
        rows = list(range(b))
        rng.shuffle(rows)
        groups, i = [], 0
        while i + 1 < len(rows) and len(groups) < b // 2:
            size = rng.randint(2, max(2, min(len(rows) - i, 64)))
            groups.append(rows[i:i + size])
            i += size
        if groups:
            levels.append(groups)
    lists = [[rng.randrange(table.shape[0]) for _ in range(b)], [0] * b, lens]
    for groups in levels:
        width = max(len(g) for g in groups)
        lists += [[rng.randrange(table.shape[0]) for _ in groups], [0] * len(groups),
                  [rng.randint(1, 4096) for _ in groups],
                  [r for g in groups for r in g + [-1] * (width - len(g))]]
    tensors = upload(torch.device("cpu"), *lists)
    own = Spans(*tensors[:3], max(lens))
    spans = []
    for k, groups in enumerate(levels):
        rows_, starts_, lens_, members = tensors[3 + 4 * k:7 + 4 * k]
        spans.append(Spans(rows_, starts_, lens_, int(lens_.max()), members.view(len(groups), -1)))
    return torch.empty(b, HEADS, DIM, dtype=torch.bfloat16), own, spans


def main(steps: int = 300) -> dict[str, int]:
    partial, reduce = Recorder(at._partial_kernel), Recorder(at._reduce_kernel)
    at._partial_kernel, at._reduce_kernel = partial, reduce
    rng = random.Random(0)
    cache = torch.empty(16, KV_HEADS, DIM, dtype=torch.bfloat16)
    table = torch.empty(257, 4096, dtype=torch.int32)
    for _ in range(steps):
        q, own, levels = random_step(rng, table)
        at._decode(q, cache, cache, table, own, levels, DIM ** -0.5, None)
    return {"partial": len(partial.keys), "reduce": len(reduce.keys)}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)))

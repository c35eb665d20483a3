"""The toy world: chain arithmetic whose every step can be checked exactly.

    Compute 47 + 38 - 19 + 26.

is solved, one step per paragraph, as

    47 + 38 = 85\\n\\n85 - 19 = 66\\n\\n66 + 26 = 92\\n\\nThe answer is \\boxed{92}.

Difficulty has two knobs: the number of operations (1 to 8) and the digits of each operand (1 or 2).
Every running value stays within 0..99 (operands and signs are drawn until it does), so each step is
one fact of a finite table of two-digit sums and differences, and hard problems are hard because
they are long. `check` labels each step of any solution text: correct when it and every step before it
are (prefix), or when it is right given the steps before it as written (its own correctness, what
the toy PRM is trained to score).

    python -m tts_engine.toy.world --out problems.jsonl [--count 300] [--seed 1234]

writes a problem set in the study CLI's dataset format (id, problem, answer, level, ops, digits).
"""
from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass

MAX_OPS, MAX_DIGITS, MAX_VALUE = 8, 2, 99
STUDY_SEED, STUDY_COUNT = 1234, 320       # the default study's problems; training never sees them
_STEP = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")
_ANSWER = re.compile(r"The answer is \\boxed\{(\d+)\}\.")


def apply(value: int, op: str, operand: int) -> int:
    """One step of a chain: value + operand or value - operand."""
    return value + operand if op == "+" else value - operand


@dataclass(frozen=True)
class Chain:
    operands: tuple[int, ...]        # first value, then one operand per operation
    ops: tuple[str, ...]             # "+" or "-"

    @property
    def text(self) -> str:
        terms = [str(self.operands[0])] + [f"{o} {b}" for o, b in zip(self.ops, self.operands[1:])]
        return f"Compute {' '.join(terms)}."

    @property
    def values(self) -> list[int]:
        """The running value after 0, 1, ... operations."""
        out = [self.operands[0]]
        for o, b in zip(self.ops, self.operands[1:]):
            out.append(apply(out[-1], o, b))
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def steps(self) -> list[str]:
        """The correct solution, each step with its separator."""
        v = self.values
        pairs = zip(self.ops, self.operands[1:])
        out = [f"{v[i]} {o} {b} = {v[i + 1]}\n\n" for i, (o, b) in enumerate(pairs)]
        return out + [f"The answer is \\boxed{{{self.answer}}}."]

    @property
    def level(self) -> int:
        """1 (one 1-digit operation) to 16 (eight 2-digit operations)."""
        return (len(self.ops) - 1) * MAX_DIGITS + self.digits

    @property
    def digits(self) -> int:
        return max(len(str(b)) for b in self.operands)


def sample_chain(rng: random.Random, ops: int, digits: int) -> Chain:
    lo, hi = (1, 9) if digits == 1 else (10 ** (digits - 1), 10 ** digits - 1)
    operands, signs = [rng.randint(lo, hi)], []
    value = operands[0]
    for _ in range(ops):
        while True:
            b, sign = rng.randint(lo, hi), rng.choice("+-")
            new = apply(value, sign, b)
            if 0 <= new <= MAX_VALUE:
                break
        value = new
        operands.append(b)
        signs.append(sign)
    return Chain(tuple(operands), tuple(signs))


def parse(problem: str) -> Chain:
    """The chain of a problem text (as Chain.text writes it)."""
    m = re.fullmatch(r"Compute (\d+)((?: [+-] \d+)+)\.", problem.strip())
    if not m:
        raise ValueError(f"not a toy problem: {problem!r}")
    rest = m.group(2).split()
    return Chain((int(m.group(1)), *map(int, rest[1::2])), tuple(rest[0::2]))


def check(problem: str, steps: list[str], prefix: bool = True) -> list[bool]:
    """Each step's label. A step is one operation, "a op b = c" with op and b the problem's next
    ones and c = a op b, or after the last operation "The answer is \\boxed{c}." with c the last
    result. prefix=True: correct when it and every step before it are right (a the true running
    value). prefix=False: correct when it is right given the steps before it as written (a the
    previous step's result): a step's own correctness, the label the toy PRM is trained on."""
    chain = parse(problem)
    values, labels, ok, last = chain.values, [], True, chain.operands[0]
    for i, step in enumerate(steps):
        text = step.strip()
        if i < len(chain.ops):
            m = _STEP.fullmatch(text)
            a, b = (values[i], chain.operands[i + 1]) if prefix else (last, chain.operands[i + 1])
            right = apply(a, chain.ops[i], b)
            good = m is not None and (int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))) == \
                (a, chain.ops[i], b, right)
            if m is not None:
                last = int(m.group(4))
        elif i == len(chain.ops):
            m = _ANSWER.fullmatch(text)
            good = m is not None and int(m.group(1)) == (chain.answer if prefix else last)
        else:
            good = False               # nothing comes after the answer
        ok = ok and good if prefix else good
        labels.append(ok)
    return labels


def split_steps(solution: str) -> list[str]:
    """A solution text's steps (paragraphs), as the search writes them."""
    return [s for s in solution.split("\n\n") if s.strip()]


def problem_set(count: int, seed: int, exclude: set[str] = frozenset()) -> list[Chain]:
    """`count` distinct chains spread evenly over every (operations, digits) pair."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    cells = [(o, d) for d in range(1, MAX_DIGITS + 1) for o in range(1, MAX_OPS + 1)]
    tries = 0
    while len(out) < count:
        ops, digits = cells[len(out) % len(cells)]
        chain = sample_chain(rng, ops, digits)
        tries += 1
        if chain.text in seen and tries < 100 * count:
            continue
        seen.add(chain.text)
        out.append(chain)
    return out


def study_problems() -> list[Chain]:
    return problem_set(STUDY_COUNT, STUDY_SEED)


def rows(chains: list[Chain], prefix: str = "toy") -> list[dict]:
    return [{"id": f"{prefix}-{i:04d}", "problem": c.text, "answer": str(c.answer), "level": c.level,
             "ops": len(c.ops), "digits": c.digits} for i, c in enumerate(chains)]


def write_jsonl(path: str, chains: list[Chain]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows(chains):
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tts_engine.toy.world", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--count", type=int, default=STUDY_COUNT)
    ap.add_argument("--seed", type=int, default=STUDY_SEED)
    args = ap.parse_args(argv)
    write_jsonl(args.out, problem_set(args.count, args.seed))


if __name__ == "__main__":
    main()

"""Answers: extraction from a solution's text, and grading by mathematical equivalence with
math-verify ("025" equals "25", \\frac12 equals 0.5, \\dfrac and \\left( forms), not string equality."""
from __future__ import annotations

import re
from functools import lru_cache

_FINAL = re.compile(r"final answer is[:\s]*(.+?)(?:\.\s*I hope|\.?\s*$)", re.IGNORECASE | re.DOTALL)


def extract_answer(text: str) -> str | None:
    """The content of the last \\boxed{...} (nested braces kept), else the sentence Llama models end
    with ("Therefore, the final answer is: X. I hope it is correct."); None when there is neither."""
    start = text.rfind("\\boxed")
    if start >= 0:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j].strip()
                j += 1
            return None                  # unbalanced: cut off mid-answer
        m = re.match(r"[^\s$.,]+", text[i:])
        return m.group(0) if m else None
    m = _FINAL.search(text)
    if m:
        return m.group(1).strip().strip("$").strip() or None
    return None


@lru_cache(maxsize=1 << 16)
def _parsed(answer: str):
    from math_verify import parse
    return parse("$" + answer + "$")


@lru_cache(maxsize=1 << 16)
def same_answer(a: str, b: str) -> bool:
    """Whether two extracted answers are mathematically the same (for grouping votes)."""
    if a.strip() == b.strip():
        return True
    from math_verify import verify
    pa, pb = _parsed(a), _parsed(b)
    return bool(pa and pb and verify(pa, pb))


def grade(predicted: str | None, gold: str) -> bool:
    """Whether a predicted answer (as extract_answer returns it) equals the gold answer."""
    return predicted is not None and same_answer(gold, predicted)

"""Text before it meets a tokenizer: the check every prompt, stop string, question and PRM step
passes, and the Qwen-Math instruction that both the policy's prompts (tasks/prompts.py) and
Qwen2.5-Math-PRM's template (prm.py) write."""
from __future__ import annotations

QWEN_MATH = "Please reason step by step, and put your final answer within \\boxed{}."


def check_unicode(what: str, text: str) -> None:
    """Text that cannot be encoded as UTF-8 (a lone surrogate) cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode: {e.reason} {text[e.start:e.end]!r} "
                         f"at index {e.start}") from None

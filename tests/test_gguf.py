"""GGUF loading: a tiny llama written as GGUF in each quantization we support, loaded by the engine
and by transformers, must give the same greedy tokens and logits; its tokenizer must encode like the
tokenizer.json it was built from."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from conftest import save_tiny_model
from test_hf_parity import check_parity, random_prompts
from tts_engine import LLM
from tts_engine.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")

_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's converter layout for q/k (the inverse of what the loader undoes)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: str, hf_model, tokenizer_dir: str, qtype) -> None:
    cfg = hf_model.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    tok = json.load(open(f"{tokenizer_dir}/tokenizer.json"))
    vocab = tok["model"]["vocab"]
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [None] * cfg.vocab_size
    for t, i in vocab.items():
        tokens[i] = t
    types = [3 if i < 4 else 1 for i in range(cfg.vocab_size)]
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    for name, t in hf_model.state_dict().items():
        a = t.float().numpy()
        if name.startswith("model.layers."):
            idx, tail = name[len("model.layers."):].split(".", 1)
            part, kind = tail.rsplit(".", 1)
            gname = f"blk.{idx}.{_NAMES[part]}.{kind}"
        else:
            gname = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        if gname.endswith("attn_q.weight"):
            a = _permute(a, cfg.num_attention_heads)
        elif gname.endswith("attn_k.weight"):
            a = _permute(a, cfg.num_key_value_heads)
        if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, a.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gname, a.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qname", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_quantizations_match_transformers(tmp_path, qname):
    folder = tmp_path / "hf"
    hf = save_tiny_model(str(folder), "llama", seed=11)
    path = str(tmp_path / f"tiny-{qname}.gguf")
    write_gguf(path, hf, str(folder), getattr(gguf.GGMLQuantizationType, qname))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f"tiny-{qname}.gguf",
                                                            dtype=torch.float32)
    llm = LLM(path, dtype="float32", device="cpu", kv_cache_tokens=2048)
    check_parity(llm, ref, random_prompts(384, lengths=(7, 33)), logit_tol=1e-4)
    # The tokenizer rebuilt from GGUF metadata encodes like the original tokenizer.json.
    text = "Step 1: add the numbers.\n\nThe answer is $\\boxed{42}$ </s>"
    assert llm.get_tokenizer().encode(text) == Tokenizer.from_dir(str(folder)).encode(text)


def test_gguf_errors(tmp_path):
    bad = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(bad), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'gpt2'"):
        LLM(str(bad), device="cpu")

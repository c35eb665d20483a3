"""Tokenizer: the `tokenizers` library plus chat templates rendered with jinja2.

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
                 eos_token: str | None = None, add_bos_token: bool | None = None):
        self._tok = tokenizer
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_token_id = self._tok.token_to_id(bos_token) if bos_token else None
        self.eos_token_id = self._tok.token_to_id(eos_token) if eos_token else None
        # GGUF files say whether to prepend BOS; tokenizer.json files carry that in their post-processor.
        self.add_bos_token = add_bos_token

    # ------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, path: str) -> "Tokenizer":
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise FileNotFoundError(
                f"no tokenizer.json in {path!r}; pass tokenizer=<folder with tokenizer.json>"
            )
        cfg = {}
        cfg_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_file):
            with open(cfg_file) as f:
                cfg = json.load(f)
        template = cfg.get("chat_template")
        if isinstance(template, list):   # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja_file):
            with open(jinja_file) as f:
                template = f.read()
        return cls(HFTokenizer.from_file(tok_file), template, _token_text(cfg.get("bos_token")),
                   _token_text(cfg.get("eos_token")))

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
        tok.add_tokens(
            [AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, types) if ty == 4]
        )
        bos, eos = field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")
        return cls(
            tok,
            field("tokenizer.chat_template"),
            tokens[bos] if bos is not None else None,
            tokens[eos] if eos is not None else None,
            bool(field("tokenizer.ggml.add_bos_token", False)),
        )

    # ------------------------------------------------------------ encode / decode
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if (
            add_special_tokens
            and self.add_bos_token
            and self.bos_token_id is not None
            and ids[:1] != [self.bos_token_id]
        ):
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    # ------------------------------------------------------------ chat
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            continue_final_message: bool = False, tokenize: bool = False, **kwargs):
        """Render `messages` with the model's jinja2 chat template, as transformers does.
        continue_final_message leaves the last (assistant) message open so generation continues it."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (none in tokenizer_config.json, "
                             "chat_template.jinja or GGUF metadata)")
        if add_generation_prompt and continue_final_message:
            raise ValueError("add_generation_prompt and continue_final_message cannot both be set")
        text = _compile(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)
        if continue_final_message:
            final = messages[-1]["content"]
            if not isinstance(final, str) or final.strip() not in text:
                raise ValueError(
                    "continue_final_message: the final message's text is not in the rendered chat"
                )
            loc = text.rindex(final.strip())
            # Keep the message's trailing whitespace when the template kept it too.
            kept = text[loc:loc + len(final.lstrip())] == final
            text = text[:loc + len(final.lstrip() if kept else final.strip())]
        return self.encode(text, add_special_tokens=False) if tokenize else text


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

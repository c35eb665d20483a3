"""Tokenizer and chat templates behave like transformers' on the same files."""
from __future__ import annotations

import pytest
import transformers

from tts_engine.tokenizer import Tokenizer

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "Step 1: add. "}]


def test_encode_decode_match_transformers(tiny_llama):
    ours = Tokenizer.from_dir(tiny_llama)
    ref = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    text = "Step 1: add the numbers.\n\nTherefore the answer is $\\boxed{8}$.</s>"
    assert ours.encode(text) == ref.encode(text)
    ids = ours.encode(text)
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.eos_token_id == ref.eos_token_id == 1


@pytest.mark.parametrize("kwargs", [{"add_generation_prompt": True}, {"continue_final_message": True}, {}])
def test_chat_template_matches_transformers(tiny_llama, kwargs):
    ours = Tokenizer.from_dir(tiny_llama)
    ref = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    msgs = MESSAGES[:1] if kwargs.get("add_generation_prompt") else MESSAGES
    assert ours.apply_chat_template(msgs, **kwargs) == ref.apply_chat_template(msgs, tokenize=False, **kwargs)


def test_chat_template_from_jinja_file(tiny_llama, tmp_path):
    import shutil
    folder = tmp_path / "t"
    shutil.copytree(tiny_llama, folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    )
    tok = Tokenizer.from_dir(str(folder))
    assert tok.apply_chat_template(MESSAGES[:1]) == "[user] What is 2 + 3?\n"


def test_no_template_and_conflicting_flags(tiny_llama):
    tok = Tokenizer.from_dir(tiny_llama)
    with pytest.raises(ValueError, match="cannot both be set"):
        tok.apply_chat_template(MESSAGES, add_generation_prompt=True, continue_final_message=True)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template(MESSAGES)


def test_smollm2_gguf_tokenizer_matches_transformers(smollm2, smollm2_gguf):
    import os
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf),
                                                     gguf_file=os.path.basename(smollm2_gguf))
    ours = smollm2.get_tokenizer()
    for text in [
        "Hello world!",
        "  leading spaces\n\nand 12345 digits, ünïcödé ✓",
        "<|im_start|>user\nhi<|im_end|>",
    ]:
        assert ours.encode(text) == ref.encode(text)
    msgs = [{"role": "user", "content": "Compute 3 + 4."}]
    assert ours.apply_chat_template(msgs, add_generation_prompt=True) == \
        ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

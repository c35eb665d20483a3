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
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ids) == ref.decode(ids)          # the same default (special tokens kept)
    assert ours.batch_decode([ids, ids[:3]]) == ref.batch_decode([ids, ids[:3]])
    assert ours.eos_token_id == ref.eos_token_id == 1 and ours.bos_token_id == ref.bos_token_id
    assert ours.pad_token_id == ref.pad_token_id
    assert ours(text)["input_ids"] == ref(text)["input_ids"] and ours(text).attention_mask == [1] * len(ids)
    assert ours([text, "add"])["input_ids"] == ref([text, "add"])["input_ids"]
    assert ours.convert_tokens_to_ids(["</s>", "<s>"]) == ref.convert_tokens_to_ids(["</s>", "<s>"])
    assert ours.convert_tokens_to_ids("</s>") == 1 and ours.convert_ids_to_tokens(1) == "</s>"
    assert len(ours) == len(ref)


@pytest.mark.parametrize("kwargs", [{"add_generation_prompt": True}, {"continue_final_message": True}, {}])
def test_chat_template_matches_transformers(tiny_llama, kwargs):
    ours = Tokenizer.from_dir(tiny_llama)
    ref = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    msgs = MESSAGES[:1] if kwargs.get("add_generation_prompt") else MESSAGES
    assert ours.apply_chat_template(msgs, tokenize=False, **kwargs) == \
        ref.apply_chat_template(msgs, tokenize=False, **kwargs)
    assert dict(ours.apply_chat_template(msgs, **kwargs)) == dict(ref.apply_chat_template(msgs, **kwargs))
    assert ours.apply_chat_template(msgs, return_dict=False, **kwargs) == \
        ref.apply_chat_template(msgs, return_dict=False, **kwargs)
    # a batch of conversations gives a list, as in transformers
    batch = [msgs, msgs[:1]]
    assert ours.apply_chat_template(batch, tokenize=False, **kwargs) == \
        ref.apply_chat_template(batch, tokenize=False, **kwargs)


def test_chat_template_from_jinja_file(tiny_llama, tmp_path):
    import shutil
    folder = tmp_path / "t"
    shutil.copytree(tiny_llama, folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    )
    tok = Tokenizer.from_dir(str(folder))
    assert tok.apply_chat_template(MESSAGES[:1], tokenize=False) == "[user] What is 2 + 3?\n"
    tok.chat_template = "{{ messages[0]['content'] }}!"          # writable, as in transformers
    assert tok.apply_chat_template(MESSAGES[:1], tokenize=False) == "What is 2 + 3?!"


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
    assert ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == \
        ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert dict(ours.apply_chat_template(msgs, add_generation_prompt=True)) == \
        dict(ref.apply_chat_template(msgs, add_generation_prompt=True))

"""Incremental detokenization gives the same text as decoding everything, token by token, on
multi-byte text; stop strings are matched by decoding short windows only."""
from __future__ import annotations

import pytest

from tts_engine import LLM, SamplingParams
from tts_engine.engine.detokenizer import IncrementalDetokenizer

TEXT = "Héllo wörld ✓ 🙂 naïve — 12,345\n\nThe answer is $\\boxed{42}$. 中文字符 and <|im_end|> too"


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_text_equals_full_decode(smollm2, skip):
    tok = smollm2.get_tokenizer()
    prompt = tok.encode("A question:")
    ids = tok.encode(TEXT, add_special_tokens=False)
    det = IncrementalDetokenizer(tok, len(prompt), skip_special_tokens=skip)
    text = ""
    for i in range(1, len(ids) + 1):
        text += det.step(prompt + ids[:i])
        full = tok.decode(ids[:i], skip)
        assert full.startswith(text)
        if not full.endswith("\ufffd"):
            assert text == full
    assert text == tok.decode(ids, skip)


def test_stop_strings_decode_short_windows(tiny_llama):
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048)
    tok = llm.get_tokenizer()
    lengths, real, real_batch = [], tok.decode, tok.decode_batch

    def spy(ids, skip_special_tokens=True):
        lengths.append(len(ids))
        return real(ids, skip_special_tokens)

    def spy_batch(batch, skip_special_tokens=True):
        lengths.extend(len(ids) for ids in batch)
        return real_batch(batch, skip_special_tokens)

    tok.decode, tok.decode_batch = spy, spy_batch
    out = llm.generate({"prompt_token_ids": [5, 6, 7]},
                       SamplingParams(temperature=0, max_tokens=200, ignore_eos=True, stop=["never-appears"]))
    assert len(out[0].outputs[0].token_ids) == 200
    # one full decode of the finished output; the others decode windows of a few tokens (longer
    # only while bytes of a character are pending): about 2 x 200 x a few tokens in all, where
    # decoding the whole output at every token costs 200 x 201 / 2 = 20,100
    *windows, final = lengths
    assert final == 200 and max(windows) < 50 and sum(windows) < 3000

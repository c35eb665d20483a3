"""Incremental detokenization gives the same text as decoding everything, token by token, on
multi-byte text; stop strings are matched without decoding the whole output at every token."""
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


def test_stop_strings_never_decode_the_whole_output_per_token(tiny_llama):
    """200 tokens matched against a stop string: the text grows by the stream's pieces (equal, in
    the end, to decoding the output at once), and the whole output is decoded once, at the end;
    decoding it at every token would cost 200 x 201 / 2 = 20,100 token decodes."""
    from tts_engine.engine.detokenizer import IncrementalDetokenizer
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048)
    tok = llm.get_tokenizer()
    decoded, pieces, real, real_push = [], [], tok.decode, IncrementalDetokenizer.push

    def spy(ids, skip_special_tokens=True):
        decoded.append(len(ids))
        return real(ids, skip_special_tokens)

    def spy_push(self, token):
        pieces.append(real_push(self, token))
        return pieces[-1]

    tok.decode, IncrementalDetokenizer.push = spy, spy_push
    try:
        params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True, stop=["never-appears"])
        out = llm.generate({"prompt_token_ids": [5, 6, 7]}, params)
    finally:
        IncrementalDetokenizer.push = real_push
    assert len(out[0].outputs[0].token_ids) == 200 and len(pieces) == 200
    text, streamed = out[0].outputs[0].text, "".join(pieces)
    # (the stream holds back bytes of an unfinished character; decoding at once shows them as U+FFFD)
    assert decoded == [200] and text.startswith(streamed) and set(text[len(streamed):]) <= {"\ufffd"}

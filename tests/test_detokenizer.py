"""Incremental detokenization gives the same text as decoding everything, token by token, on
multi-byte text; stop strings are matched without decoding the whole output at every token."""
from __future__ import annotations

import pytest

from tts_engine import LLM, SamplingParams
from tts_engine.engine.detokenizer import IncrementalDetokenizer, stop_triggers, token_texts

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
    llm = LLM(tiny_llama, dtype="float32", device="cpu", kv_cache_tokens=2048)
    tok = llm.get_tokenizer()
    decoded, pieces, real, real_step = [], [], tok.decode, IncrementalDetokenizer.step

    def spy(ids, skip_special_tokens=True):
        decoded.append(len(ids))
        return real(ids, skip_special_tokens)

    def spy_step(self, ids):
        pieces.append(real_step(self, ids))
        return pieces[-1]

    tok.decode, IncrementalDetokenizer.step = spy, spy_step
    try:
        params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True, stop=["never-appears"])
        out = llm.generate({"prompt_token_ids": [5, 6, 7]}, params)
    finally:
        IncrementalDetokenizer.step = real_step
    assert len(out[0].outputs[0].token_ids) == 200 and len(pieces) <= 200
    text, streamed = out[0].outputs[0].text, "".join(pieces)
    # (the stream holds back bytes of an unfinished character; decoding at once shows them as U+FFFD)
    assert decoded == [200] and text.startswith(streamed)


def test_few_tokens_wake_the_detokenizer(smollm2):
    """A search's step boundary: only tokens whose text holds a newline can complete "\n\n"."""
    tok = smollm2.get_tokenizer()
    texts = token_texts(tok, True)
    flags = stop_triggers(texts, ["\n\n"], smollm2.engine.model_config.vocab_size)
    newline = {i for i, t in enumerate(texts) if "\n" in t}
    assert {i for i, f in enumerate(flags) if f} == newline and len(newline) < 0.01 * len(texts)
    # a stop ending outside ASCII also wakes on unfinished bytes; one ending in a space, always
    assert sum(stop_triggers(texts, ["步"], len(texts))) > sum(1 for t in texts if "步" in t)
    assert all(stop_triggers(texts, ["a "], len(texts)))


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's alphabet: each byte as the printable character that stands for it."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b], extra = chr(256 + extra), extra + 1
    return out


# Pieces with whole and split multi-byte characters, newlines and spaces, so that random tokens
# make all the cases: bytes held back, completed by a later token, invalid, and stops inside one.
PIECES = ["中", "é", "🙂", "\n\n", "}\n", " a", "a}", "ab", "\n中", "中\n", "é}", " 中", "a b"]
SPLIT = [b"\xe4\xb8", b"\xad", b"\xf0\x9f", b"\x99\x82", b"\xc3", b"\n\xe4"]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    if kind == "byte-level":
        b2u = _bytes_to_unicode()
        vocab = {"<s>": 0, "</s>": 1} | {b2u[b]: 2 + b for b in range(256)}
        for piece in [p.encode() for p in PIECES] + SPLIT:
            vocab.setdefault("".join(b2u[b] for b in piece), len(vocab))
        tok = Tokenizer(models.BPE(vocab, []))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:   # sentencepiece's way (Llama 2, Mistral): "▁" for spaces, bytes for the rest
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
        for piece in PIECES + ["▁", "▁a", "▁中"]:
            vocab.setdefault(piece.replace(" ", "▁"), len(vocab))
        tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    return tok


@pytest.mark.parametrize("kind", ["byte-level", "byte-fallback"])
def test_waking_only_on_triggers_matches_as_decoding_every_token(tmp_path, kind, monkeypatch):
    """The oracle is the detokenizer woken at every token. Random tokens (a random model at
    temperature 1.5) over pieces that split characters; stops ending in ASCII, outside it, and in
    a space; the same tokens, texts and stop reasons either way, and many stopped by a string."""
    import json

    import torch

    import tts_engine.engine.output as output
    from random_model import save_random_model
    tok = _tokenizer(kind)
    config = dict(architectures=["LlamaForCausalLM"], vocab_size=tok.get_vocab_size(), hidden_size=16,
                  intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=8, rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2)
    save_random_model(str(tmp_path), config, dtype=torch.float32)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", kv_cache_tokens=8192)
    free = llm.generate({"prompt_token_ids": [5, 6]}, SamplingParams(n=24, temperature=1.5, max_tokens=40,
                                                                     ignore_eos=True, seed=7), use_tqdm=False)
    seen = "".join(o.text for o in free[0].outputs)
    wide = [c for c in seen if not c.isascii() and c != "\ufffd"]
    assert wide, seen
    stop_sets = [["\n"], ["中"], ["é", "}"], ["\n\n"], [" a"], ["🙂"], [wide[0]], [seen[10:12]], [seen[30]]]
    every = lambda texts, stops, vocab_size: b"\x01" * max(vocab_size, len(texts))    # noqa: E731
    stopped = 0
    for stops in stop_sets:
        params = SamplingParams(n=24, temperature=1.5, max_tokens=40, ignore_eos=True, seed=7, stop=stops)
        llm.engine.output._triggers.clear()
        lazy = llm.generate({"prompt_token_ids": [5, 6]}, params, use_tqdm=False)[0].outputs
        with monkeypatch.context() as m:
            m.setattr(output, "stop_triggers", every)
            llm.engine.output._triggers.clear()
            eager = llm.generate({"prompt_token_ids": [5, 6]}, params, use_tqdm=False)[0].outputs
        for a, b in zip(lazy, eager):
            assert (a.token_ids, a.text, a.stop_reason, a.finish_reason) == \
                   (b.token_ids, b.text, b.stop_reason, b.finish_reason), stops
        stopped += sum(isinstance(o.stop_reason, str) for o in lazy)
    assert stopped >= 24 * len(stop_sets) // 3


@pytest.mark.parametrize("kind", ["byte-level", "byte-fallback"])
def test_every_short_token_run_stops_where_decoding_every_token_stops(kind, monkeypatch):
    """Every run of 3 tokens over the pieces above (whole and split characters, newlines, spaces)
    through the engine's output step: where it stops, its text and stop reason are the same as
    with the detokenizer woken at every token."""
    import itertools
    from types import SimpleNamespace

    import tts_engine.engine.output as output
    from tts_engine.engine.output import OutputProcessor
    from tts_engine.engine.sampler import SampledRow
    from tts_engine.engine.sequence import Sequence, Status
    tok = _tokenizer(kind)
    vocab = tok.get_vocab()
    pieces = {vocab[k] for k in vocab if k not in ("<unk>", "<s>", "</s>") and not k.startswith("<0x")}
    pieces -= set(range(2 + 256))     # (byte-level: the single bytes)
    if kind == "byte-fallback":     # (its split characters are byte tokens)
        pieces |= {vocab[f"<0x{b:02X}>"] for b in b"".join(SPLIT)}
    chosen = sorted(pieces | {tok.token_to_id("<s>")}
                    | {tok.encode(t, add_special_tokens=False).ids[0] for t in ("a", "}", "\n")})
    wrapped = SimpleNamespace(backend_tokenizer=tok)

    def outcomes(processor, stops):
        out = []
        for ids in itertools.product(chosen, repeat=3):
            seq = Sequence(0, 0, 0, [1], SamplingParams(max_tokens=8, stop=stops, ignore_eos=True), 0)
            seq.status = Status.RUNNING
            for t in ids:
                seq.in_flight = 1
                if processor.append_all([seq], [SampledRow(t, 0.0, True, None)])[0]:
                    break
            # (the text so far is final only once a stop string ends it: else it is decoded then)
            out.append((seq.num_output_tokens, seq.stop_reason, seq.text if seq.stop_reason else None))
        return out

    every = lambda texts, stops, vocab_size: b"\x01" * max(vocab_size, len(texts))    # noqa: E731
    for stops in (["中"], ["🙂", "é"], ["\n"], ["a}"], [" a"], ["\n\n"], ["} "]):
        lazy = outcomes(OutputProcessor(wrapped, set(), 64, len(vocab)), stops)
        with monkeypatch.context() as m:
            m.setattr(output, "stop_triggers", every)
            eager = outcomes(OutputProcessor(wrapped, set(), 64, len(vocab)), stops)
        assert lazy == eager, stops
        assert any(r[1] == stops[0] for r in lazy)


def test_a_decoder_that_strips_across_tokens_wakes_at_every_token():
    """Fuse then Strip("\\n") drops a newline that the next token then brings back: "\\n" alone
    decodes to "", yet its arrival can complete "\\n\\n". Such a decoder is not skipped."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models

    from tts_engine.engine.detokenizer import decoder_is_safe
    from tts_engine.engine.output import OutputProcessor
    from tts_engine.engine.sampler import SampledRow
    from tts_engine.engine.sequence import Sequence, Status
    tok = Tokenizer(models.WordLevel({"a": 0, "\n": 1, "x": 2, "<unk>": 3}, unk_token="<unk>"))
    tok.decoder = decoders.Sequence([decoders.Fuse(), decoders.Strip("\n", 0, 1)])
    wrapped = SimpleNamespace(backend_tokenizer=tok)
    assert not decoder_is_safe(wrapped)
    for kind in ("byte-level", "byte-fallback"):
        assert decoder_is_safe(SimpleNamespace(backend_tokenizer=_tokenizer(kind)))
    processor = OutputProcessor(wrapped, set(), 64, 4)
    seq = Sequence(0, 0, 0, [0], SamplingParams(max_tokens=8, stop=["\n\n"], ignore_eos=True), 0)
    seq.status = Status.RUNNING
    for t in (0, 1, 1, 2):
        seq.in_flight = 1
        if processor.append_all([seq], [SampledRow(t, 0.0, True, None)])[0]:
            break
    assert seq.stop_reason == "\n\n" and seq.num_output_tokens == 4


def test_an_invalid_byte_run_keeps_the_next_tokens_space():
    """A byte-fallback run that turns out invalid makes the stream start again; the token after it
    keeps its leading space (it is decoded after the token before it)."""
    tok = _tokenizer("byte-fallback")
    vocab = tok.get_vocab()
    from types import SimpleNamespace
    det = IncrementalDetokenizer(SimpleNamespace(backend_tokenizer=tok), 0)
    ids = [vocab[t] for t in ("<0xE2>", "<0x80>", "<0x80>", "<0xE2>", "▁a")]
    assert det.step(ids).endswith(" a")

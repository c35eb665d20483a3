"""The toy models' tokenizer: byte-level BPE trained with `tokenizers` on toy text, digits always
single tokens (arithmetic is learnt digit by digit), newlines never merged with text (as in real
vocabularies, whose pre-tokenizers split at line breaks: a step's "\n\n" separator, the search's
stop string, must end a token, not sit inside one), no BOS added by the post-processor (the chat
template writes it), and a chat template with user and assistant turns. The models were trained
without a system prompt, so the template leaves system messages out."""
from __future__ import annotations

import json
import os
import random

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tts_engine.toy.world import MAX_DIGITS, MAX_OPS, sample_chain

BOS, EOS, PAD, USER, ASSISTANT = "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build(seed: int = 0, vocab_size: int = 96) -> Tokenizer:
    rng = random.Random(seed)
    corpus = []
    for i in range(2000):
        chain = sample_chain(rng, 1 + i % MAX_OPS, 1 + i % MAX_DIGITS)
        corpus.append(chain.text + "\n" + "".join(chain.steps))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD, USER, ASSISTANT],
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def save(tok: Tokenizer, folder: str) -> None:
    """tokenizer.json and tokenizer_config.json, as a Hugging Face checkpoint has them."""
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
              "pad_token": PAD, "add_bos_token": False, "model_max_length": 256,
              "chat_template": CHAT_TEMPLATE}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)

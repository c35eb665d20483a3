"""PRM: process reward models on the engine, scoring only what is new.

`PRM(path).score(questions, trajectories)` gives one score in [0, 1] per step. Each family writes
(question, steps) as its model card does (the README's table of PRM families) and reads its
head at the step tags:

- math-shepherd: question + " " + each step + " ки\\n"; softmax over the "+" / "-" logits at each
  "ки" (only those two columns of the LM head are computed).
- rlhflow: the PRM's chat template, first user turn question + " " + step 1, then one step per user
  turn, "+" as every assistant reply; P("+") against "-" at the position before each reply.
- skywork: BOS + question + "\\n", then each step (inner newlines flattened) encoded on its own and
  followed by "\\n"; sigmoid of the value head (v_head.summary) at each step's "\\n".
- qwen2.5-math-prm: its chat template with its system prompt, the question as the user turn and
  the steps joined by <extra_0> (one after each) as the assistant turn; probability of class 1 of
  the 2-class score head at each <extra_0>.
Steps are stripped of surrounding whitespace first, as the paper's code does.

Incremental: the engine's radix tree keeps the tokens of scored trajectories, and the PRM keeps
each tag's score keyed by a digest of the tokens up to it, so a trajectory that extends a scored
one computes only its new tokens and sends only its new tags through the head. Tokens after the
last tag that needs a score are never computed (causal attention: they cannot change it).
Where the family allows (`Family.extendable`: skywork encodes each step apart; qwen2.5-math-prm's
text after an <extra_0> tag tokenizes the same alone, checked on probe steps at load), the PRM
also keeps how it wrote each trajectory (`_Written`: token ids, tag positions, digests, the hash
state at the last tag, and its scores once scored, kept apart from `score_cache_size`), so a
trajectory that is a written one plus new steps, as every round of a step search sends, is
written and hashed from its new steps only (`Family.extend`), and the engine matches it against
its radix tree from where the trajectory it extends ended (`Engine.encode`'s `after`): a round's
host work grows with its new steps, not with depth. The other two tokenize the whole text at
once, where a step's tokens may depend on the text around it, and are written whole.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

from tts_engine.config import EngineConfig
from tts_engine.engine.cache import Prefix
from tts_engine.engine.engine import Engine
from tts_engine.loader import find_checkpoint, tensor_names
from tts_engine.models.heads import ClassificationHead, LMHead, ValueHead
from tts_engine.text import QWEN_MATH, check_unicode
from tts_engine.tokenizer import Tokenizer
from tts_engine.work import Work

KINDS = ("math-shepherd", "rlhflow", "skywork", "qwen2.5-math-prm")
RLHFLOW_PLACEHOLDER = "<|reserved_special_token_0|>"


class Family:
    """How one PRM family writes a trajectory and reads its head."""
    name: str
    head: type = LMHead                    # the head it reads (models/heads.py)
    columns: list[int] | None = None       # LM-head columns read (None: the whole head's output)
    extendable = False                     # `extend` works (else every trajectory is written whole)

    def __init__(self, tok: Tokenizer):
        self.tok = tok

    def encode(self, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """Token ids, and the position whose head output scores each step."""
        raise NotImplementedError

    def extend(self, ids: list[int], positions: list[int],
               new_steps: list[str]) -> tuple[list[int], list[int]]:
        """encode(question, steps + new_steps) up to its last tag, given (ids, positions) =
        encode(question, steps), in work that grows with the new steps only (families with
        `extendable`)."""
        raise NotImplementedError

    def probability(self, out: torch.Tensor) -> torch.Tensor:
        """Head outputs at the score positions -> scores in [0, 1]."""
        return torch.softmax(out, -1)[:, 0]          # P("+") of the ("+", "-") columns

    def _token(self, text: str) -> int:
        ids = self.tok.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"{self.name}: the tokenizer gives no token for {text!r}")
        return ids[-1]

    def _tags(self, ids: list[int], tag: int, steps: list[str], what: str) -> list[int]:
        positions = [i for i, t in enumerate(ids) if t == tag]
        if len(positions) != len(steps):
            raise ValueError(f"{self.name}: found {len(positions)} {what} tags for {len(steps)} steps "
                             f"(does the question or a step contain the tag itself?)")
        return positions


class MathShepherd(Family):
    name = "math-shepherd"

    def __init__(self, tok: Tokenizer):
        super().__init__(tok)
        self.tag = self._token("ки")
        self.columns = [self._token("+"), self._token("-")]

    def encode(self, question, steps):
        ids = self.tok.encode(question + " " + "".join(s + " ки\n" for s in steps))
        return ids, self._tags(ids, self.tag, steps, "'ки'")


class RLHFlow(Family):
    name = "rlhflow"

    def __init__(self, tok: Tokenizer):
        super().__init__(tok)
        self.placeholder = tok.convert_tokens_to_ids(RLHFLOW_PLACEHOLDER)
        if self.placeholder is None or tok.chat_template is None:
            raise ValueError(f"rlhflow needs a chat template and the {RLHFLOW_PLACEHOLDER} token in the "
                             f"tokenizer")
        self.plus = self._token("+")
        self.columns = [self.plus, self._token("-")]

    def encode(self, question, steps):
        chat = []
        for i, step in enumerate(steps):
            chat += [{"role": "user", "content": question + " " + step if i == 0 else step},
                     {"role": "assistant", "content": RLHFLOW_PLACEHOLDER}]
        text = self.tok.apply_chat_template(chat, tokenize=False)
        ids = self.tok.encode(text, add_special_tokens=False)
        tags = self._tags(ids, self.placeholder, steps, RLHFLOW_PLACEHOLDER)
        ids = [self.plus if t == self.placeholder else t for t in ids]   # every assistant reply is "+"
        return ids, [p - 1 for p in tags]


class Skywork(Family):
    name = "skywork"
    head = ValueHead
    extendable = True       # each step is encoded on its own

    def __init__(self, tok: Tokenizer):
        super().__init__(tok)
        self.newline = self._token("\n")

    def encode(self, question, steps):
        return self.extend(self.tok.encode((self.tok.bos_token or "") + question + "\n"), [], steps)

    def extend(self, ids, positions, new_steps):
        ids, positions = list(ids), list(positions)
        for step in new_steps:
            ids += self.tok.encode(step.replace("\n", " ")) + [self.newline]
            positions.append(len(ids) - 1)
        return ids, positions

    def probability(self, out):
        return torch.sigmoid(out[:, 0])


class QwenMathPRM(Family):
    name = "qwen2.5-math-prm"
    head = ClassificationHead

    def __init__(self, tok: Tokenizer):
        super().__init__(tok)
        self.tag = tok.convert_tokens_to_ids("<extra_0>")
        if self.tag is None or tok.chat_template is None:
            raise ValueError("qwen2.5-math-prm needs a chat template and the <extra_0> token in the "
                             "tokenizer")
        # What the template writes after the assistant turn's text (its end-of-turn); and whether
        # the text after a tag tokenizes the same alone (<extra_0> is an added token, which the
        # tokenizer splits at before anything else, unless its pre-tokenizer looks across it) and
        # the template writes the steps as they are: checked once, on probe steps.
        text = self._text("question", ["step"])
        self.closing = text[text.rindex("<extra_0>") + len("<extra_0>"):] if "<extra_0>" in text else ""
        question, steps = "What is 12 × 3? Then add ½.", ["First, 12 × 3 = 36.", "Then  36 + ½ = 36.5 (中)."]
        try:
            whole = self.encode(question, steps)
            ids, positions = self.extend(*self.encode(question, steps[:1]), steps[1:])
            end = positions[-1] + 1
            self.extendable = positions == whole[1] and ids[:end] == whole[0][:end]
        except ValueError:          # (a template that does not write the steps as they are)
            self.extendable = False

    def _text(self, question, steps):
        chat = [{"role": "system", "content": QWEN_MATH}, {"role": "user", "content": question},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
        return self.tok.apply_chat_template(chat, tokenize=False)

    def encode(self, question, steps):
        ids = self.tok.encode(self._text(question, steps))
        return ids, self._tags(ids, self.tag, steps, "<extra_0>")

    def extend(self, ids, positions, new_steps):
        # <extra_0> is an added token: the tokenizer splits the text at each one before anything
        # else, so the text after the last scored tag is tokenized the same on its own
        start = positions[-1] + 1
        tail = self.tok.encode("<extra_0>".join(new_steps) + "<extra_0>" + self.closing,
                               add_special_tokens=False)
        return ids[:start] + tail, positions + [start + p for p in self._tags(tail, self.tag, new_steps,
                                                                               "<extra_0>")]

    def probability(self, out):
        return torch.softmax(out, -1)[:, 1]


FAMILIES = {f.name: f for f in (MathShepherd, RLHFlow, Skywork, QwenMathPRM)}


def detect(config: dict, tensor_names: set[str], tok: Tokenizer) -> str:
    """The family of a checkpoint: from its architectures and head tensors, else from its tag tokens."""
    archs = config.get("architectures") or []
    if "Qwen2ForProcessRewardModel" in archs or ClassificationHead.tensor in tensor_names:
        return "qwen2.5-math-prm"
    if "Qwen2ForPrmModel" in archs or ValueHead.tensor in tensor_names:
        return "skywork"
    vocab = tok.get_vocab()
    if "ки" in vocab or "▁ки" in vocab:
        return "math-shepherd"
    if RLHFLOW_PLACEHOLDER in vocab and tok.chat_template is not None:
        return "rlhflow"
    raise ValueError(f"cannot tell which PRM family {config.get('architectures')} is (no Qwen2.5-Math-PRM or "
                     f"Skywork head, no 'ки' or {RLHFLOW_PLACEHOLDER} tag token); name the family "
                     f"(PRM(kind=...), --prm-kind): one of {', '.join(KINDS)}")


class PRM:
    def __init__(self, model: str, kind: str = "auto", *, score_cache_size: int = 1 << 20, **engine_args):
        """A process reward model from a local checkpoint. kind: one of KINDS or "auto". engine_args:
        the engine's settings (EngineConfig: dtype, device, kv_cache_tokens, gpu_memory_utilization,
        tokenizer, max_num_batched_tokens, ...). Loading runs no code from the checkpoint (auto_map
        is ignored) and reads safetensors or GGUF only."""
        if kind != "auto" and kind not in KINDS:
            raise ValueError(f"unknown PRM kind {kind!r}; use 'auto' or one of {', '.join(KINDS)}")
        known = EngineConfig.__dataclass_fields__.keys() - {"model", "head"}
        unknown = sorted(engine_args.keys() - known)
        if unknown:
            raise ValueError(f"PRM() got unknown argument(s) {', '.join(unknown)}; the engine's are "
                             f"{', '.join(sorted(known))}")
        if kind == "auto":
            ckpt = find_checkpoint(model)
            kind = detect(ckpt.config, tensor_names(ckpt), Tokenizer.load(ckpt, engine_args.get("tokenizer")))
        self.engine = Engine(EngineConfig(model=model, head=FAMILIES[kind].head.name, **engine_args))
        self.kind = kind
        self.family = FAMILIES[kind](self.engine.tokenizer)
        self._scores: OrderedDict[bytes, float] = OrderedDict()   # digest of the tokens up to a tag -> score
        self._score_cache_size = score_cache_size
        # (question, steps as given) -> how it was written, for trajectories that extend it
        self._written: OrderedDict[tuple[str, tuple[str, ...]], _Written] = OrderedDict()
        self._written_tokens = 0

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def score(self, questions: str | list[str], trajectories: list[list[str]]) -> list[list[float]]:
        """One score in [0, 1] per step of each trajectory. questions: one shared string, or one per
        trajectory. All trajectories go through the engine together."""
        return self.score_with_work(questions, trajectories)[0]

    def score_with_work(self, questions: str | list[str], trajectories: list[list[str]]
                        ) -> tuple[list[list[float]], list[Work]]:
        """`score`, and what each trajectory cost: the engine's work on it and the head on its new
        tags (a tag shared by trajectories is computed and paid for once, by the first)."""
        if not isinstance(trajectories, list) or any(not isinstance(t, list) for t in trajectories):
            raise ValueError("trajectories must be a list of lists of step strings")
        if isinstance(questions, str):
            questions = [questions] * len(trajectories)
        if not isinstance(questions, list) or len(questions) != len(trajectories):
            raise ValueError(f"questions must be a string or a list with one per trajectory "
                             f"({len(trajectories)}), got {type(questions).__name__}")
        written = [self._write(q, t) for q, t in zip(questions, trajectories)]
        # each trajectory encodes the tags not seen before, cut after its last new one; the leading
        # tags whose scores it has from the trajectory it extends are not looked at
        known = [w.scores if w.scores is not None else w.prior for w in written]
        rests = [w.digests[len(have):] for w, have in zip(written, known)]     # the other tags' digests
        pending: set[bytes] = set()
        prompts, positions, after, encoded_by = [], [], [], []
        for w, have, digests in zip(written, known, rests):
            new = [(p, d) for p, d in zip(w.positions[len(have):], digests)
                   if d not in self._scores and d not in pending]
            encoded_by.append(len(prompts) if new else None)
            if new:
                pending.update(d for _, d in new)
                end = new[-1][0] + 1
                prompts.append(w.ids if end == len(w.ids) else w.ids[:end])
                positions.append(new)
                after.append(w.after)
        encoded = self.engine.encode(prompts, [[p for p, _ in new] for new in positions],
                                     ids_from_tokenizer=True, after=after) if prompts else []
        new_scores, head_bytes = {}, self.engine.head_weight_bytes(self.family.columns)
        all_tags = sum(map(len, positions))
        if encoded:
            columns = self.family.columns
            out = self.engine.apply_head(torch.cat([e.hidden for e in encoded]), columns)
            new_scores = dict(zip((d for new in positions for _, d in new),
                                  self.family.probability(out).tolist()))
        # every score read before any is remembered: remembering may forget a tag a later
        # trajectory reads
        fresh = [[new_scores[d] if d in new_scores else self._scores[d] for d in rest] for rest in rests]
        out, works = [], []
        for w, have, rest, scores, index in zip(written, known, rests, fresh, encoded_by):
            for d, score in zip(rest, scores):     # remember (least recently used forgotten first)
                self._remember(d, score)
            w.scores = have + scores
            out.append(list(w.scores))
            work = Work()
            if index is not None:
                w.prefix = encoded[index].prefix
                work = encoded[index].work
                tags = len(positions[index])
                work.flops += self.engine.head_flops(tags, self.family.columns)
                work.weight_bytes += head_bytes * tags / all_tags      # (one head call for all)
            works.append(work)
        return out, works

    def _write(self, question, steps) -> _Written:
        """The trajectory's tokens, tag positions and digests: from the longest written trajectory
        it extends (its new steps written and hashed alone) where the family is `extendable`, else
        whole (and then not kept)."""
        if not isinstance(question, str):
            raise ValueError(f"a question must be a string, got {type(question).__name__}")
        if not steps:
            raise ValueError("a trajectory has no steps (an empty list)")
        keep = self.family.extendable
        try:
            key = (question, tuple(steps))
            hash(key)
        except TypeError:
            key = None
        if key is None:                 # (a step that is not a string: refused here)
            self._checked(steps, 0)
        if key in self._written:
            self._written.move_to_end(key)
            return self._written[key]
        base, k = None, len(steps) - 1      # (a search round adds one step: found at once)
        while keep and k > 0 and (base := self._written.get((question, key[1][:k]))) is None:
            k -= 1
        if base is None:
            check_unicode("question", question)
            ids, positions = self.family.encode(question, self._checked(steps, 0))
            digests, hasher = _digests(ids, positions)
            prior = []
        else:
            self._written.move_to_end((question, key[1][:k]))     # (its children may come next)
            prior = base.scores or []       # the scores of the leading tags: base's own tags
            ids, positions = self.family.extend(base.ids, base.positions, self._checked(steps[k:], k))
            more, hasher = _digests(ids, positions[len(base.positions):], base.hasher,
                                    base.positions[-1] + 1)
            digests = base.digests + more
        if positions[-1] >= self.engine.max_model_len:
            raise ValueError(f"a trajectory needs {positions[-1] + 1} tokens up to its last step tag but "
                             f"the PRM's context is {self.engine.max_model_len} (the question alone has "
                             f"{len(self.engine.tokenizer.encode(question))} tokens)")
        w = _Written(ids, positions, digests, hasher, prior, base.prefix if base is not None else None)
        if not keep:
            return w
        self._written[key] = w
        self._written_tokens += len(ids)
        while self._written_tokens > WRITTEN_TOKENS and len(self._written) > 1:
            self._written_tokens -= len(self._written.popitem(last=False)[1].ids)
        return w

    @staticmethod
    def _checked(steps: list[str], first: int) -> list[str]:
        """Steps stripped and checked; first: the index of steps[0] in its trajectory."""
        bad = next((s for s in steps if not isinstance(s, str)), None)
        if bad is not None:
            raise ValueError(f"steps must be strings, got {type(bad).__name__}")
        stripped = [s.strip() for s in steps]
        if any(not s for s in stripped):
            raise ValueError(f"step {first + stripped.index('') + 1} of a trajectory is empty")
        for s in stripped:
            check_unicode("step", s)
        return stripped

    def _remember(self, digest: bytes, score: float) -> None:
        self._scores[digest] = score
        self._scores.move_to_end(digest)
        if len(self._scores) > self._score_cache_size:
            self._scores.popitem(last=False)

    def stats(self) -> dict[str, int]:
        """The engine's counters (prompt tokens are the PRM's inputs; FLOPs include the head's),
        as LLM.stats()."""
        return self.engine.counters()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix and remembered score (a study does this between methods, so
        that each one's FLOPs are its own)."""
        self.engine.reset_prefix_cache()
        self._scores.clear()
        self._written.clear()
        self._written_tokens = 0
        return True

    def reset_stats(self) -> None:
        self.engine.reset_stats()

# Token ids of the trajectories whose writing is kept (least recently used forgotten first; a
# trajectory used as a base counts as used): two rounds of 256 trajectories of 8k tokens, at 8
# bytes a token (an extension's list shares its base's int objects), about 32 MB.
WRITTEN_TOKENS = 1 << 22


@dataclass
class _Written:
    """A trajectory as the PRM wrote it: its tokens, its step tags' positions, the digest of the
    tokens up to each tag, and the hash state after the last tag (to go on from); the scores of its
    leading tags known when it was written (those of the trajectory it extends), and all its
    scores once scored."""
    ids: list[int]
    positions: list[int]
    digests: list[bytes]
    hasher: "hashlib.blake2b"
    prior: list[float]
    after: Prefix | None = None         # where the trajectory it extends ended in the engine's tree
    scores: list[float] | None = None
    prefix: Prefix | None = None        # where it ended there itself, once encoded


def _digests(ids: list[int], positions: list[int], hasher=None, done: int = 0):
    """A digest of ids[:p + 1] for each p, in one pass; hasher: the state after ids[:done] (a
    fresh one for done = 0). Returns the digests and the state after the last p."""
    h, out = (hasher.copy() if hasher is not None else hashlib.blake2b(digest_size=16)), []
    for p in positions:
        h.update(array("q", ids[done:p + 1]).tobytes())
        done = p + 1
        out.append(h.copy().digest())
    return out, h

"""Every input of a study, checked before a model loads or any work runs: options and their ranges,
the output folder, the dataset's rows, each model folder (a recognised architecture with the head its
role needs, a PRM family that resolves) and --pretrain-tokens. A failure is a UsageError whose
message names the option and the value: the command line prints it as one line and exits 2."""
from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass

from tts_engine.loader import find_checkpoint, resolve_model_path, safetensors_files, tensor_shapes
from tts_engine.tasks.data import Problem, load_dataset

# Budgets past this are refused up front: best-of-N keeps N samples of one problem in flight and
# the paper's largest budget is 256 (FastTTS and ETS go to 512). 1e9 once started and died with
# a MemoryError deep inside.
MAX_N = 4096
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
RAY_ADDRESS = re.compile(r"^(auto|(ray://)?[\w.\-\[\]:]+:\d+)$")


class UsageError(Exception):
    """Bad input, found before any model is loaded (exit code 2)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the checks learned of a model folder without loading its weights."""
    path: str            # as given
    resolved: str        # the folder or .gguf file it names
    architecture: str
    parameters: int      # from the tensor shapes of the weight files' headers
    weights: tuple[str, ...]      # the weight files the loader reads
    prm_kind: str | None = None


def check_options(args, needs_prm: set[str]) -> None:
    """Ranges and combinations of the options (no I/O)."""
    def positive(flag: str, value, upper: int | None = None) -> None:
        if value is not None and (value < 1 or (upper is not None and value > upper)):
            bound = f"between 1 and {upper}" if upper else ">= 1"
            raise UsageError(f"{flag} must be {bound}, got {value}")

    if not args.policy:
        raise UsageError("--policy is required (one or more model folders)")
    if not args.dataset:
        raise UsageError("--dataset is required (a JSONL file or a cached dataset name)")
    for n in args.n:
        positive("--n", n, MAX_N)
    for flag in ("beam_width", "max_steps", "step_tokens", "max_tokens", "limit", "chunk", "workers",
                 "verify_every", "wave"):
        positive("--" + flag.replace("_", "-"), getattr(args, flag))
    if not 0 <= args.difficulty_samples <= MAX_N:
        raise UsageError(f"--difficulty-samples must be between 0 and {MAX_N}, got {args.difficulty_samples}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0 (0: greedy), got {args.temperature}")
    if args.reject_every < 0:
        raise UsageError(f"--reject-every must be >= 0 (0: off), got {args.reject_every}")
    if not (math.isfinite(args.reject_margin) and args.reject_margin >= 0):
        raise UsageError(f"--reject-margin must be a finite number >= 0, got {args.reject_margin}")
    if args.stop_at is not None and not (math.isfinite(args.stop_at) and 0 < args.stop_at <= 1):
        raise UsageError(f"--stop-at must be in (0, 1], got {args.stop_at}")
    if not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    for flag in ("policy_memory", "prm_memory"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and 0 < value <= 1):
            raise UsageError(f"--{flag.replace('_', '-')} must be in (0, 1], got {value}")
    if args.prm and args.policy_memory + args.prm_memory > 1:
        raise UsageError(f"--policy-memory {args.policy_memory} and --prm-memory {args.prm_memory} share one "
                         f"GPU: their sum must be at most 1")
    if args.device is not None and not DEVICE.match(args.device):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    stray = [p for p in args.cot_only if p not in args.policy]
    if stray:
        raise UsageError(f"--cot-only {stray[0]!r} is not one of --policy")
    needs = [m for m in args.method if m in needs_prm]
    if needs and not args.prm:
        raise UsageError(f"--method {' '.join(needs)} needs a PRM: give --prm")
    if "compute-optimal" in args.method and args.difficulty_samples < 1:
        raise UsageError("--method compute-optimal picks by difficulty bin: it needs --difficulty-samples "
                         ">= 1, got 0")
    if {"beam", "dvts", "beam-vg", "dvts-adaptive", "compute-optimal"} & set(args.method):
        bad = [n for n in args.n if n % args.beam_width]
        if bad:
            raise UsageError(f"N={bad[0]} is not a multiple of --beam-width {args.beam_width} (beam search "
                             f"and DVTS keep N / M beams)")
    if args.workers or args.ray_address:
        import importlib.util
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--workers and --ray-address need Ray: pip install 'tts-engine[ray]'")
    if args.ray_address is not None and not RAY_ADDRESS.match(args.ray_address):
        # (ray.init waits on an address it cannot reach: a malformed one is refused here)
        raise UsageError(f"--ray-address must be auto or HOST:PORT (or ray://HOST:PORT), got "
                         f"{args.ray_address!r}")


def check_device(device: str | None) -> str:
    """The device the study runs on: the one asked for, which must exist, else CUDA when available."""
    import torch
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA device(s)")
    return device


def check_out(out: str) -> None:
    """The output folder exists or can be made, and a file can be written in it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out!r} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UsageError(f"--out {out!r} is not writable ({e.strerror or e})") from None


def lock_out(out: str):
    """An exclusive lock on the folder for this run (two runs appending at once would write the
    same units twice); held while the returned file stays open."""
    import fcntl
    f = open(os.path.join(out, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UsageError(f"--out {out!r} is in use by another running study (wait for it, or use another "
                         f"folder)") from None
    return f


def check_dataset(source: str, limit: int | None) -> tuple[list[Problem], list[Problem]]:
    """All the dataset's problems (its identity) and the first `limit` of them (the study's)."""
    try:
        problems = load_dataset(source)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--dataset: {e}") from None
    if not problems:
        raise UsageError(f"--dataset {source!r} has no problems")
    return problems, problems[:limit] if limit is not None else problems


def check_model(path: str, role: str, prm_kind: str = "auto", prompt_style: str = "auto") -> ModelInfo:
    """A model folder (or .gguf file) that can serve as `role` ("policy" or "prm"): a recognised
    architecture, the head the role reads, a tokenizer that loads (with a chat template when the
    policy's prompt style needs one), and for a PRM a family that resolves."""
    from tts_engine.models.heads import LMHead
    from tts_engine.models.registry import resolve
    flag = f"--{role}"
    try:
        resolved = resolve_model_path(path)
        if not os.path.exists(resolved):
            raise UsageError(f"{flag} {path!r}: model {path!r} does not exist")
        ckpt = find_checkpoint(resolved)
        architecture, spec = resolve(ckpt.config)
        shapes = tensor_shapes(ckpt)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UsageError(f"{flag} {path!r}: {e}") from None
    lm_head = LMHead.tensor in shapes or bool(ckpt.config.get("tie_word_embeddings"))
    kind = None
    if role == "policy":
        if spec.head is not LMHead or not lm_head:
            raise UsageError(f"{flag} {path!r} is not a policy: {architecture} has no language-model head "
                             f"(a reward model? pass it as --prm)")
        _policy_tokenizer(flag, path, ckpt, prompt_style)
    else:
        kind = _prm_kind(flag, path, ckpt, set(shapes), prm_kind, lm_head)
    weights = (ckpt.gguf_path,) if ckpt.gguf_path is not None else tuple(safetensors_files(ckpt.folder))
    parameters = sum(math.prod(shape) for shape in shapes.values())
    return ModelInfo(path, os.path.abspath(resolved), architecture, parameters, weights, kind)


def _policy_tokenizer(flag: str, path: str, ckpt, prompt_style: str) -> None:
    from tts_engine.tokenizer import Tokenizer
    try:
        tok = Tokenizer.load(ckpt)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UsageError(f"{flag} {path!r}: {e}") from None
    if prompt_style in ("llama3", "qwen") and tok.chat_template is None:
        raise UsageError(f"{flag} {path!r} has no chat template, which --prompt-style {prompt_style} needs "
                         f"(use --prompt-style plain or auto)")


def _prm_kind(flag: str, path: str, ckpt, names: set[str], kind: str, lm_head: bool) -> str:
    from tts_engine.models.heads import LMHead
    from tts_engine.prm import FAMILIES, detect
    from tts_engine.tokenizer import Tokenizer
    try:
        tok = Tokenizer.load(ckpt)
        if kind == "auto":
            kind = detect(ckpt.config, names, tok)
        family = FAMILIES[kind](tok)        # checks the family's tag tokens and chat template
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{flag} {path!r}: {e}") from None
    # (a tied LM head has no tensor of its own)
    if not (lm_head if family.head is LMHead else family.head.tensor in names):
        raise UsageError(f"{flag} {path!r}: a {kind} PRM reads its {family.head.name} head, which this "
                         f"checkpoint does not have (a policy? pass it as --policy)")
    return kind


def check_training_json(info: ModelInfo) -> int | None:
    """The pre-training token count in training.json beside the weights ({"training_tokens": ...}),
    if there is one; a file that does not parse or a count that is not positive is refused."""
    from tts_engine.loader import read_json
    folder = info.resolved if os.path.isdir(info.resolved) else os.path.dirname(info.resolved)
    file = os.path.join(folder, "training.json")
    if not os.path.isfile(file):
        return None
    try:
        count = read_json(file).get("training_tokens")
    except (ValueError, AttributeError) as e:
        raise UsageError(f"{file}: not a JSON object with training_tokens ({e})") from None
    if count is None:
        return None
    number = isinstance(count, (int, float)) and not isinstance(count, bool)
    if not number or not math.isfinite(count) or count < 1:
        raise UsageError(f"{file}: training_tokens {count!r} is not a positive token count "
                         f"(or give --pretrain-tokens NAME=TOKENS)")
    return int(count)


def check_pretrain_tokens(items: list[str], names: list[str]) -> dict[str, int]:
    """--pretrain-tokens NAME=TOKENS: NAME one of the study's models, TOKENS a positive count."""
    tokens = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--pretrain-tokens {item!r}: expected MODEL=TOKENS (for example "
                             f"{names[0]}=2e12)")
        if name not in names:
            raise UsageError(f"--pretrain-tokens {item!r}: {name!r} is none of this study's models "
                             f"({', '.join(names)})")
        try:
            count = float(value)
        except ValueError:
            count = float("nan")
        if not (math.isfinite(count) and count >= 1):
            raise UsageError(f"--pretrain-tokens {item!r}: {value!r} is not a positive token count")
        tokens[name] = int(count)
    return tokens

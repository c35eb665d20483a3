"""What a study folder knows about what produced it: OUT/manifest.json.

It records every setting that changes a result row, the dataset's content hash, each model's resolved
path with a hash of its config, tokenizer and weights, and the project version. Every row written
carries the hash of the settings (`Manifest.key`). Into an existing folder, a command with the same
settings resumes, and one that only adds work (methods, budgets, problems, models) extends it; any
difference is refused before work starts, with the list of what differs."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from tts_engine.study.checks import ModelInfo, UsageError
from tts_engine.tasks.data import Problem

# The options that change what a row holds. Methods, budgets, --limit, models and --workers do not
# (they choose which rows exist); --chunk does, since prefix sharing inside a unit is counted.
RESULT_SETTINGS = ("seed", "temperature", "top_p", "beam_width", "max_steps", "step_tokens", "max_tokens",
                   "prompt_style", "dtype", "device", "prm_kind", "difficulty_samples", "chunk",
                   "verify_every", "reject_every", "reject_margin", "stop_at", "wave",
                   # the KV pool's size on a GPU: a smaller pool preempts, and recomputed tokens count
                   "policy_memory", "prm_memory")
# Settings added after the first manifests, with the value that reproduces the rows made before
# they existed (a folder from then resumes and extends with them at these values).
LEGACY = {"verify_every": 2, "reject_every": 0, "reject_margin": 0.2, "stop_at": 0.6, "wave": 1}
# Files of a model folder that decide its outputs, hashed whole; weight files are sampled.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "special_tokens_map.json", "model.safetensors.index.json")
SAMPLE_BLOCKS, BLOCK = 16, 1 << 16


@dataclass
class Manifest:
    version: str
    settings: dict
    dataset: dict                      # source, problems, hash of every problem's id, text, answer, level
    models: dict[str, dict] = field(default_factory=dict)    # name -> path, hash, architecture, ...

    @property
    def key(self) -> str:
        """The hash of everything that makes rows comparable, carried by each row."""
        blob = json.dumps([self.version, self.settings, self.dataset["hash"]], sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()

    def write(self, folder: str) -> None:
        path = os.path.join(folder, "manifest.json")
        with open(path + ".tmp", "w") as f:
            json.dump({**asdict(self), "key": self.key}, f, indent=1)
        os.replace(path + ".tmp", path)      # never a half-written manifest

    @classmethod
    def read(cls, folder: str) -> "Manifest":
        path = os.path.join(folder, "manifest.json")
        try:
            with open(path) as f:
                data = json.load(f)
            return cls(data["version"], data["settings"], data["dataset"], data["models"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--out {folder!r}: its manifest.json is unreadable ({e}); start a new folder "
                             f"(--out NEW)") from None


def settings_of(args, device: str) -> dict:
    return {**{name: getattr(args, name) for name in RESULT_SETTINGS}, "device": device}


def dataset_identity(source: str, problems: list[Problem]) -> dict:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.problem, p.answer, p.level]).encode() + b"\n")
    return {"source": source, "problems": len(problems), "hash": h.hexdigest()[:16]}


def model_identity(info: ModelInfo) -> dict:
    """The model's resolved path and a hash of what decides its outputs: the config and tokenizer
    files whole, and each weight file's size, header and blocks sampled across it (a retrained
    model of the same shapes differs in every block; reading a few MB keeps this instant)."""
    path = info.resolved
    h = hashlib.blake2b(digest_size=8)
    files = [os.path.join(path, f) for f in MODEL_FILES if os.path.isfile(os.path.join(path, f))] \
        if os.path.isdir(path) else []
    for file in files:
        with open(file, "rb") as f:
            h.update(os.path.basename(file).encode() + b"\0" + f.read())
    for file in info.weights:
        _sample(h, file)
    return {"path": path, "hash": h.hexdigest(), "architecture": info.architecture,
            "parameters": info.parameters, "prm_kind": info.prm_kind}


def _sample(h, file: str) -> None:
    size = os.path.getsize(file)
    h.update(os.path.basename(file).encode() + b"\0" + str(size).encode())
    with open(file, "rb") as f:
        if size <= (SAMPLE_BLOCKS + 16) * BLOCK:
            h.update(f.read())
            return
        h.update(f.read(16 * BLOCK))        # the header: tensor names, shapes, offsets (GGUF: metadata)
        for i in range(1, SAMPLE_BLOCKS + 1):
            f.seek((size - BLOCK) * i // SAMPLE_BLOCKS)
            h.update(f.read(BLOCK))


def differences(old: Manifest, new: Manifest) -> list[str]:
    out = []
    if old.version != new.version:
        out.append(f"tts-engine version {old.version} -> {new.version}")
    for name in sorted(set(old.settings) | set(new.settings)):
        a, b = old.settings.get(name, LEGACY.get(name)), new.settings.get(name, LEGACY.get(name))
        if a != b:
            out.append(f"--{name.replace('_', '-')} {a} -> {b}")
    if old.dataset["hash"] != new.dataset["hash"]:
        out.append(f"dataset {old.dataset['source']} ({old.dataset['problems']} problems) -> "
                   f"{new.dataset['source']} ({new.dataset['problems']} problems, other contents)")
    for name in sorted(set(old.models) & set(new.models)):
        a, b = old.models[name], new.models[name]
        if a["hash"] != b["hash"]:
            out.append(f"model {name}: {a['path']} -> {b['path']} (other weights, config or tokenizer)")
    return out


def reconcile(folder: str, new: Manifest) -> Manifest:
    """The folder's manifest for this command: written when the folder is new, extended by new models,
    and refused (UsageError) when any setting differs."""
    if not os.path.exists(os.path.join(folder, "manifest.json")):
        stray = [f for f in ("results.jsonl", "difficulty.jsonl") if os.path.exists(os.path.join(folder, f))]
        if stray:
            raise UsageError(f"--out {folder!r} holds {stray[0]} but no manifest.json (written by an older "
                             f"version, settings unknown): start a new folder (--out NEW)")
        new.write(folder)
        return new
    old = Manifest.read(folder)
    if not any(os.path.getsize(os.path.join(folder, f)) for f in ("results.jsonl", "difficulty.jsonl")
               if os.path.exists(os.path.join(folder, f))):
        new.write(folder)        # no row yet (a run stopped before its first unit): nothing to mix
        return new
    diff = differences(old, new)
    if diff:
        raise UsageError(f"--out {folder!r} holds results made with other settings: {'; '.join(diff)}. Run "
                         f"with the folder's settings (its manifest.json) to resume or extend it, or start "
                         f"a new folder (--out NEW)")
    merged = Manifest(old.version, old.settings, old.dataset, {**old.models, **new.models})
    if merged.models != old.models:
        merged.write(folder)
    return merged

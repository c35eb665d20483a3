"""Problem sets: a JSONL file by path (`problem`, `answer`, optional `id` and `level`, as in a
MATH-500 export), or a Hugging Face dataset name through `datasets` when it is installed and the
dataset is in its cache (nothing is downloaded)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    level: int | None = None


def load_dataset(source: str, limit: int | None = None) -> list[Problem]:
    """Problems from a JSONL path or a cached Hugging Face dataset name (`name` or `name:split`).
    A row that is not an object, lacks a problem or an answer, or has a null or empty one is a
    ValueError naming the row: a null answer would otherwise be graded against the string "None"."""
    if source.endswith(".jsonl") or os.path.exists(source):
        rows = _read_jsonl(source)
    else:
        rows = _read_hub(source)
    problems = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i + 1}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} is a JSON {type(row).__name__}, not an object with 'problem' and "
                             f"'answer'")
        if "problem" not in row or "answer" not in row:
            raise ValueError(f"{where} lacks 'problem' or 'answer' (keys: {sorted(row)})")
        for key in ("problem", "answer"):
            if row[key] is None or not str(row[key]).strip():
                raise ValueError(f"{where} has {'a null' if row[key] is None else 'an empty'} {key!r}")
        level = row.get("level")
        level = int(level) if isinstance(level, (int, str)) and str(level).isdigit() else None
        problems.append(Problem(str(row.get("id", i)), str(row["problem"]), str(row["answer"]), level))
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{source}: problem ids are not unique ({dup!r} repeats)")
    return problems[:limit] if limit is not None else problems


def _read_jsonl(path: str) -> list:
    if os.path.isdir(path):
        raise FileNotFoundError(f"dataset {path!r} is a folder, not a JSONL file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset {path!r} does not exist")
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}: line {n} is not JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    return rows


def _read_hub(name: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(f"dataset {name!r} is neither a file nor loadable: a Hugging Face dataset "
                                f"name needs the `datasets` package (pip install 'tts-engine[datasets]')") \
            from None
    path, _, split = name.partition(":")
    try:
        data = datasets.load_dataset(path, split=split or "test", download_mode="reuse_cache_if_exists")
    except Exception as e:   # offline and not cached, or no such dataset
        raise FileNotFoundError(f"dataset {name!r} is not a file and not in the Hugging Face cache "
                                f"({e})") from None
    return [dict(row) for row in data]

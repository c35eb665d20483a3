"""The study's append-only JSONL files (results.jsonl, difficulty.jsonl), written in whole units.

Every row carries the settings hash of the folder's manifest, its unit and the unit's row count; a
unit's rows are appended in one write and synced. On load a torn last line (a kill mid-write) is cut,
and so are the rows of a unit that is not whole: a resumed study runs that unit again on the same
problems, so its rows (FLOPs included: sharing inside a unit is counted) equal an uninterrupted
run's."""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Callable

from tts_engine.study.checks import UsageError


def read_rows(path: str, repair: bool = True) -> list[dict]:
    """The rows of a JSONL file we append to. A torn last line is dropped, and (with repair: only
    the study that owns the folder repairs it) cut from the file so that it stays whole."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


class Store:
    """One JSONL file of a study folder: rows of whole units, all made with the settings `key`."""

    def __init__(self, path: str, key: str, row_key: Callable[[dict], tuple]):
        self.path, self.row_key = path, row_key
        rows = read_rows(path)
        whole = whole_units(rows, row_key, path)
        if len(whole) < len(rows):
            self._rewrite(whole)
        alien = [r for r in whole if r.get("settings") != key]
        if alien:
            raise UsageError(f"{path} holds {len(alien)} rows made with settings {alien[0].get('settings')}, "
                             f"not this folder's manifest.json ({key}): start a new folder (--out NEW)")
        self.rows = first_per_key(whole, row_key)
        self.done = {row_key(r) for r in self.rows}

    def add_unit(self, rows: list[dict]) -> None:
        """Append a unit's rows together (they already carry settings, unit and unit_size). Once
        the OS has them, they count as saved, even if Ctrl-C lands during the sync that follows:
        a killed process keeps what it wrote, and the message after Ctrl-C counts these rows."""
        handed = False
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
                f.flush()
                handed = True
                os.fsync(f.fileno())
        finally:
            if handed:
                self.rows += rows
                self.done |= {self.row_key(r) for r in rows}

    def _rewrite(self, rows: list[dict]) -> None:
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.path + ".tmp", self.path)


def whole_units(rows: list[dict], row_key: Callable[[dict], tuple], path: str) -> list[dict]:
    """The rows of whole units (a unit cut by a kill is left out), a unit written twice once."""
    kept, seen = [], set()
    for i, r in enumerate(rows):
        try:
            entry = (r["unit"], row_key(r))
        except (KeyError, TypeError):
            raise UsageError(f"{path}: row {i + 1} is not a study row (no unit, or keys missing): start "
                             f"a new folder (--out NEW)") from None
        if entry not in seen:
            seen.add(entry)
            kept.append(r)
    count = Counter(r["unit"] for r in kept)
    return [r for r in kept if count[r["unit"]] == r.get("unit_size")]


def first_per_key(rows: list[dict], row_key: Callable[[dict], tuple]) -> list[dict]:
    """One row per key (per problem of a policy, PRM, method and N): the first written."""
    out, done = [], set()
    for r in rows:
        if row_key(r) not in done:
            done.add(row_key(r))
            out.append(r)
    return out


def result_key(r: dict) -> tuple:
    return r["policy"], r["prm"], r["method"], r["n"], r["id"]


def difficulty_key(r: dict) -> tuple:
    return r["policy"], r["prm"], r["id"]


def open_stores(out: str, key: str) -> tuple[Store, Store]:
    """The folder's two files: results.jsonl (a row per policy, PRM, method, N and problem) and
    difficulty.jsonl (a row per policy, PRM and problem)."""
    return (Store(os.path.join(out, "results.jsonl"), key, result_key),
            Store(os.path.join(out, "difficulty.jsonl"), key, difficulty_key))


def saved_rows(out: str) -> tuple[list[dict], list[dict]]:
    """The result and difficulty rows of a folder as the study counts them (whole units, a row per
    key), read only: a study may still be appending to them."""
    return tuple(first_per_key(whole_units(read_rows(os.path.join(out, name), repair=False), key, name), key)
                 for name, key in (("results.jsonl", result_key), ("difficulty.jsonl", difficulty_key)))

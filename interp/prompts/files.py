"""Prompt files, read the way people write them: JSONL, CSV (Excel's UTF-8-with-BOM export included) and JSON (a
list of records, or ``{"prompts": [...]}``).

Text must be UTF-8 (with or without a byte-order mark); any other encoding is refused with the file and the line
of the first undecodable byte. Malformed content (a JSONL line that is not a JSON object, a CSV row with more or
fewer fields than its header, an unclosed quote, a duplicated column or key) is refused with the file and line
number, never silently reshaped into other prompts.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..errors import PromptError

SUFFIXES = (".jsonl", ".csv", ".json")


def looks_like_path(text: str) -> bool:
    """A string meant as a file name rather than as a prompt: it ends in a prompt-file suffix, names an existing
    file or directory, or is one word with a path separator or a file suffix (``data/prompts``, ``p.txt``)."""
    if text.endswith(SUFFIXES) or Path(text).exists():
        return True
    one_word = text.strip() == text and not any(c.isspace() for c in text)
    return one_word and ("/" in text or "\\" in text or bool(Path(text).suffix))


def read_prompt_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a prompt file (see the module docstring for what is accepted)."""
    path = Path(path)
    if not path.exists():
        raise PromptError(f"Prompt file {str(path)!r}: no such file.")
    if path.is_dir():
        raise PromptError(f"Prompt file {str(path)!r} is a directory; give a .jsonl, .csv or .json file.")
    if path.suffix not in SUFFIXES:
        raise PromptError(f"Prompt file {str(path)!r}: unknown format {path.suffix!r}; give a .jsonl, .csv or .json "
                          "file.")
    text = _decode(path)
    if path.suffix == ".csv":
        return _csv_records(path, text)
    if path.suffix == ".json":
        return _json_records(path, text)
    return _jsonl_records(path, text)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PromptError(f"{path}: the file is UTF-16; save it as UTF-8 (e.g. 'CSV UTF-8' in Excel).")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptError(f"{path}: line {line} is not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
                          "save the file as UTF-8.") from None
    return text.removeprefix("\ufeff")  # Excel's UTF-8 export starts with a byte-order mark


def _no_duplicate_keys(path: Path, where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise PromptError(f"{path}: {where} has the key {dup!r} twice.")
        return dict(pairs)

    return hook


def _jsonl_records(path: Path, text: str) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_keys(path, f"line {n}"))
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}: line {n} is not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict):
            raise PromptError(f"{path}: line {n} is a JSON {type(record).__name__}, not an object with a 'prompt'.")
        out.append(record)
    return out


def _json_records(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys(path, "an object"))
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path}: line {exc.lineno} is not valid JSON ({exc.msg}).") from None
    if isinstance(doc, dict):
        if set(doc) != {"prompts"}:
            raise PromptError(f"{path}: a JSON prompt file holds a list of records or {{\"prompts\": [...]}}; this "
                              f"object has the keys {sorted(doc)[:5]}.")
        doc = doc["prompts"]
    if not isinstance(doc, list):
        raise PromptError(f"{path}: a JSON prompt file holds a list of records, not a {type(doc).__name__}.")
    for i, record in enumerate(doc):
        if not isinstance(record, (dict, str)):
            raise PromptError(f"{path}: record {i} is a JSON {type(record).__name__}; give objects with a 'prompt' "
                              "(or strings).")
    return [r if isinstance(r, dict) else {"prompt": r} for r in doc]


def _csv_records(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    out = []
    try:
        for row in reader:
            if header is None:
                header = row
                dup = next((c for c in header if header.count(c) > 1), None)
                if dup is not None:
                    raise PromptError(f"{path}: the column {dup!r} appears twice in the header.")
                continue
            if not row:
                continue
            if len(row) != len(header):
                raise PromptError(f"{path}: line {reader.line_num} has {len(row)} fields where the header has "
                                  f"{len(header)}.")
            out.append(dict(zip(header, row)))
    except csv.Error as exc:
        raise PromptError(f"{path}: line {reader.line_num}: {exc} (an unclosed quote?).") from None
    return out

"""The prompt set: records with a ``prompt`` and the known fields, from lists, DataFrames or JSONL / CSV / JSON
files; chat templates; subsets and filters; a content fingerprint."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import PromptError

KNOWN_FIELDS = ("prompt", "target", "subject", "relation", "label", "task", "id")


class PromptSet:
    """An ordered set of prompt records.

    Build it from a list of strings, a list of dicts, a pandas DataFrame, or a path to a JSONL / CSV file.
    ``chat_template`` wraps every prompt: ``True`` uses the tokenizer's chat template when :meth:`encode` runs
    (pass ``tokenizer=`` to apply it now), a string with ``{prompt}`` is a format (e.g.
    ``"User: {prompt}\\nAssistant:"``). The unwrapped text stays in the ``raw_prompt`` field.
    """

    def __init__(self, data: Any, *, chat_template: bool | str | None = None, tokenizer: Any = None):
        records = _records_from(data)
        if not records:
            raise PromptError("The prompt set is empty: give at least one prompt.")
        self.records: list[dict[str, Any]] = [_check_record(r, i) for i, r in enumerate(records)]
        _check_field_types(self.records)
        ids = [r["id"] for r in self.records]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise PromptError(f"Prompt ids must be unique; id {dup!r} appears more than once.")
        if chat_template:
            self.records = _wrap_chat(self.records, chat_template, tokenizer)

    # --- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_jsonl(cls, path: str | Path, **kw: Any) -> PromptSet:
        return cls(Path(path), **kw)

    @classmethod
    def from_csv(cls, path: str | Path, **kw: Any) -> PromptSet:
        return cls(Path(path), **kw)

    # --- access -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, item: int | slice | Sequence[int]) -> Any:
        if isinstance(item, int):
            return self.records[item]
        if isinstance(item, slice):
            return self._subset(self.records[item])
        return self._subset([self.records[i] for i in item])

    def _subset(self, records: list[dict[str, Any]]) -> PromptSet:
        new = object.__new__(PromptSet)
        new.records = list(records)
        if not new.records:
            raise PromptError("The selection leaves the prompt set empty.")
        return new

    def filter(self, **equals: Any) -> PromptSet:
        """Records whose fields equal the given values, e.g. ``prompts.filter(task="country_capital")``."""
        return self._subset([r for r in self.records if all(r.get(k) == v for k, v in equals.items())])

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    @property
    def prompts(self) -> list[str]:
        return [r["prompt"] for r in self.records]

    @property
    def fields(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.update(dict.fromkeys(r))
        return list(seen)

    def column(self, name: str) -> list[Any]:
        self.require(name)
        return [r.get(name) for r in self.records]

    def require(self, *names: str) -> None:
        """Raise a PromptError naming the first record that lacks one of ``names``."""
        for name in names:
            for r in self.records:
                value = r.get(name)
                if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
                    raise PromptError(f"Prompt {r['id']!r} has no {name!r} field, which this method needs.")

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.records)

    def fingerprint(self) -> str:
        """A short hash of the records' content (recorded in every Result's metadata)."""
        blob = json.dumps(self.records, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"PromptSet({len(self)} prompts; fields: {', '.join(self.fields)})"


def as_prompt_set(prompts: Any) -> PromptSet:
    return prompts if isinstance(prompts, PromptSet) else PromptSet(prompts)


def _records_from(data: Any) -> list[dict[str, Any]]:
    from .files import looks_like_path, read_prompt_file

    if isinstance(data, PromptSet):
        return [dict(r) for r in data.records]
    if isinstance(data, Path) or (isinstance(data, str) and looks_like_path(data)):
        return read_prompt_file(data)
    if isinstance(data, str):
        raise PromptError("A single string is not a prompt set: pass a list of prompts, e.g. [text].")
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        return [{k: v for k, v in row.items()} for row in data.to_dict(orient="records")]
    if isinstance(data, Iterable):
        out = []
        for i, item in enumerate(data):
            if isinstance(item, str):
                out.append({"prompt": item})
            elif isinstance(item, dict):
                out.append(dict(item))
            else:
                raise PromptError(f"Prompt {i} is a {type(item).__name__}; give strings or dicts with a 'prompt'.")
        return out
    raise PromptError(f"Cannot make a prompt set from a {type(data).__name__}.")


def _check_record(record: dict[str, Any], index: int) -> dict[str, Any]:
    record = {k: v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))}
    rid = record.get("id", index)
    record["id"] = str(rid)
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise PromptError(f"Prompt {record['id']!r} has no 'prompt' text (got {type(prompt).__name__}).")
    if not prompt.strip():
        raise PromptError(f"Prompt {record['id']!r} is empty.")
    for name in ("target", "subject", "relation"):
        if name in record and record[name] is not None and not isinstance(record[name], str):
            raise PromptError(f"Prompt {record['id']!r}: field {name!r} must be text, got {record[name]!r}.")
    return record


def _check_field_types(records: list[dict[str, Any]]) -> None:
    """Refuse a field whose values mix kinds (e.g. numbers in some records, text in others): a table carrying it
    could not be exported after the run. Integers and floats count as one kind (numbers)."""
    kinds: dict[str, dict[str, str]] = {}
    for r in records:
        for k, v in r.items():
            if v is None:
                continue
            kind = ("bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else
                    "text" if isinstance(v, str) else type(v).__name__)
            seen = kinds.setdefault(k, {})
            seen.setdefault(kind, r.get("id", "?"))
            if len(seen) > 1:
                (k1, id1), (k2, id2) = list(seen.items())[:2]
                raise PromptError(f"Field {k!r} mixes kinds: {k1} in prompt {str(id1)!r}, {k2} in prompt "
                                  f"{str(id2)!r}; give it one kind in every record (e.g. all text).")


def _wrap_chat(records: list[dict[str, Any]], template: bool | str, tokenizer: Any) -> list[dict[str, Any]]:
    out = []
    for r in records:
        r = dict(r)
        r.setdefault("raw_prompt", r["prompt"])
        if isinstance(template, str):
            if "{prompt}" not in template:
                raise PromptError("A chat format string must contain '{prompt}', e.g. 'User: {prompt}\\nAssistant:'.")
            r["prompt"] = template.replace("{prompt}", r["raw_prompt"])
        else:
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise PromptError(
                    "chat_template=True needs a tokenizer that has a chat template; pass tokenizer=model.tokenizer, "
                    "or give a format string such as 'User: {prompt}\\nAssistant:'."
                )
            r["prompt"] = tokenizer.apply_chat_template(
                [{"role": "user", "content": r["raw_prompt"]}], tokenize=False, add_generation_prompt=True
            )
        out.append(r)
    return out

"""Prompt sets, their tokenisation (with token spans of fields and target tokens) and exact left-padded batches.

A :class:`PromptSet` holds records: ``prompt`` (required) and the known fields ``target``, ``subject``,
``relation``, ``label``, ``task``, ``id``; every other column is kept as metadata. :func:`encode` turns it into
token ids for one model, and :func:`batches` into left-padded :class:`Batch` es whose position ids come from the
attention mask, so a method's numbers for a padded batch equal its numbers prompt by prompt.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import PromptError, SpanError

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
    if isinstance(data, PromptSet):
        return [dict(r) for r in data.records]
    if isinstance(data, (str, Path)) and (isinstance(data, Path) or data.endswith((".jsonl", ".csv", ".json"))):
        path = Path(data)
        if not path.exists():
            raise PromptError(f"Prompt file {str(path)!r} does not exist.")
        if path.suffix == ".csv":
            with path.open(newline="") as fh:
                return [dict(row) for row in csv.DictReader(fh)]
        text = path.read_text()
        if path.suffix == ".json":
            loaded = json.loads(text)
            return _records_from(loaded)
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise PromptError(f"{path}: line {n} is not valid JSON ({exc.msg}).") from exc
        return out
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


# --- tokenisation -----------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """One prompt tokenised for one model: ids (BOS included where the model prepends it) and char offsets."""

    ids: list[int]
    offsets: list[tuple[int, int]]  # per token; (0, 0) for BOS
    text: str
    bos: bool

    def __len__(self) -> int:
        return len(self.ids)


def tokenize(model: Any, text: str) -> Encoded:
    """Tokenise ``text`` the way the model is fed: no tokenizer-added specials, BOS prepended if the model does."""
    tok = model.tokenizer
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    bos = bool(model.info.prepends_bos) and tok.bos_token_id is not None
    if bos:
        ids = [tok.bos_token_id] + ids
        offsets = [(0, 0)] + offsets
    return Encoded(ids=ids, offsets=offsets, text=text, bos=bos)


def token_span(encoded: Encoded, value: str, *, prompt_id: str = "?", field_name: str = "field") -> tuple[int, int]:
    """Token indices [start, end) of the first occurrence of ``value`` in the prompt.

    A token that begins with whitespace before the value (" Paris" for "Paris") counts as inside the span;
    any other character outside the value inside a span token is a cut through a token and an error.
    """
    text = encoded.text
    if not value:
        raise SpanError(f"Prompt {prompt_id!r}: the {field_name} is empty.")
    c0 = text.find(value)
    if c0 < 0:
        raise SpanError(f"Prompt {prompt_id!r}: the {field_name} {value!r} does not occur in the prompt {text!r}.")
    c1 = c0 + len(value)
    first = int(encoded.bos)
    inside = [i for i in range(first, len(encoded.ids)) if encoded.offsets[i][1] > c0 and encoded.offsets[i][0] < c1]
    if not inside:
        raise SpanError(f"Prompt {prompt_id!r}: no token covers the {field_name} {value!r}.")
    s, e = inside[0], inside[-1] + 1
    start_char, end_char = encoded.offsets[s][0], encoded.offsets[e - 1][1]
    if start_char < c0 and text[start_char:c0].strip():
        raise SpanError(
            f"Prompt {prompt_id!r}: the {field_name} {value!r} starts inside the token "
            f"{text[start_char:encoded.offsets[s][1]]!r}; make the field a whole-token substring."
        )
    if end_char > c1:
        raise SpanError(
            f"Prompt {prompt_id!r}: the {field_name} {value!r} ends inside the token "
            f"{text[encoded.offsets[e - 1][0]:end_char]!r}; make the field a whole-token substring."
        )
    return s, e


def target_token(model: Any, encoded: Encoded, target: str, *, prompt_id: str = "?") -> int:
    """The target's first token: the token that follows the prompt when prompt + target is tokenised."""
    if not isinstance(target, str) or not target:
        raise PromptError(f"Prompt {prompt_id!r}: the target is empty.")
    full = tokenize(model, encoded.text + target)
    n = len(encoded.ids)
    if full.ids[:n] != encoded.ids or len(full.ids) <= n:
        raise SpanError(
            f"Prompt {prompt_id!r}: the target {target!r} merges with the end of the prompt when tokenised "
            "together; end the prompt before a token boundary (targets usually start with a space)."
        )
    tid = full.ids[n]
    _warn_unless_word_start(model, encoded.text, tid, target, prompt_id)
    return tid


def _warn_unless_word_start(model: Any, prompt: str, token_id: int, target: str, prompt_id: str) -> None:
    """Warn (TargetTokenWarning) when the scored token does not begin a word: the prompt does not end in
    whitespace and the token does not start with it."""
    if not prompt or prompt[-1].isspace():
        return
    text = model.tokenizer.decode([token_id])
    if text[:1].isspace() or not text[:1].isalnum():
        return
    import warnings

    from .errors import TargetTokenWarning

    warnings.warn(
        f"Prompt {prompt_id!r}: the target {target!r} is scored as the token {text!r}, which does not begin a "
        f"word (the prompt ends in {prompt[-8:]!r}); targets usually start with a space, e.g. {' ' + target!r}.",
        TargetTokenWarning, stacklevel=3)


@dataclass
class EncodedSet:
    """A prompt set tokenised for one model, with the token spans and target tokens asked for."""

    prompts: PromptSet
    items: list[Encoded]
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    targets: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [len(e) for e in self.items]


def encode(
    model: Any, prompts: Any, *, targets: Sequence[str] = (), spans: Sequence[str] = ()
) -> EncodedSet:
    """Tokenise every prompt, and check the named target fields and span fields for every record.

    All checks run before any forward pass; an error names the prompt at fault.
    """
    prompts = as_prompt_set(prompts)
    prompts.require(*targets, *spans)
    items = [tokenize(model, r["prompt"]) for r in prompts.records]
    out = EncodedSet(prompts=prompts, items=items)
    for name in spans:
        out.spans[name] = [
            token_span(e, r[name], prompt_id=r["id"], field_name=name) for e, r in zip(items, prompts.records)
        ]
    for name in targets:
        out.targets[name] = [
            target_token(model, e, r[name], prompt_id=r["id"]) for e, r in zip(items, prompts.records)
        ]
    return out


# --- batches ----------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Left-padded rows of prompts. Position p of row i sits at column ``p + offsets[i]``; the last real token
    of every row is column ``T - 1``."""

    indices: list[int]  # positions of these rows in the prompt set
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B]
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # padded coordinates
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] token ids

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    @property
    def offsets(self) -> torch.Tensor:
        return self.width - self.lengths

    @property
    def last(self) -> int:
        return self.width - 1

    def to(self, device: Any) -> Batch:
        return Batch(
            indices=self.indices,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            lengths=self.lengths,
            spans=self.spans,
            targets={k: v.to(device) for k, v in self.targets.items()},
        )

    def repeat(self, k: int) -> Batch:
        """The batch stacked k times (row r of copy j is row j * B + r): the layout of the variants engine."""
        return Batch(
            indices=self.indices * k,
            input_ids=self.input_ids.repeat(k, 1),
            attention_mask=self.attention_mask.repeat(k, 1),
            position_ids=self.position_ids.repeat(k, 1),
            lengths=self.lengths.repeat(k),
            spans={n: s * k for n, s in self.spans.items()},
            targets={n: t.repeat(k) for n, t in self.targets.items()},
        )


def make_batch(model: Any, encoded: EncodedSet, indices: Sequence[int]) -> Batch:
    """Left-pad the chosen prompts into one batch; position ids come from the attention mask."""
    items = [encoded.items[i] for i in indices]
    width = max(len(e) for e in items)
    pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else 0
    ids = torch.full((len(items), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        ids[row, width - len(e):] = torch.tensor(e.ids, dtype=torch.long)
        mask[row, width - len(e):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    lengths = torch.tensor([len(e) for e in items], dtype=torch.long)
    spans = {
        name: [(s + width - len(e), t + width - len(e)) for (s, t), e in zip((sp[i] for i in indices), items)]
        for name, sp in encoded.spans.items()
    }
    targets = {name: torch.tensor([t[i] for i in indices], dtype=torch.long) for name, t in encoded.targets.items()}
    return Batch(list(indices), ids, mask, positions, lengths, spans, targets)


def batches(model: Any, encoded: EncodedSet, batch_size: int, *, sort_by_length: bool = True) -> Iterator[Batch]:
    """Yield batches covering every prompt once. Sorting by length only cuts padding: results are the same."""
    order = list(range(len(encoded)))
    if sort_by_length:
        order.sort(key=lambda i: len(encoded.items[i]))
    for start in range(0, len(order), batch_size):
        yield make_batch(model, encoded, order[start:start + batch_size])

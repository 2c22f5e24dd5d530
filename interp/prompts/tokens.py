"""Tokenisation the way the model is fed: token ids with character offsets, token spans of prompt fields, and
the first token of a target (with a warning when it does not begin a word)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PromptError, SpanError
from .prompt_set import PromptSet, as_prompt_set


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

    from ..errors import TargetTokenWarning

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

"""Tokenisation the way the model is fed: token ids with character offsets, token spans of prompt fields, and
the first token of a target (with a warning when it does not begin a word)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PromptError, SpanError
from .prompt_set import PromptSet, as_prompt_set

INVISIBLE = " \t\n\r\f\v\u00a0\u200b\u200c\u200d\u2060\ufeff"  # whitespace and zero-width characters


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


def whole_word_occurrences(text: str, value: str) -> list[int]:
    """Start offsets of ``value`` in ``text`` where it is not glued to a letter or digit on either side (a value
    that starts or ends with a non-word character is not checked on that side)."""
    starts, i = [], text.find(value)
    while i >= 0:
        j = i + len(value)
        left_ok = not (value[:1].isalnum() and i > 0 and text[i - 1].isalnum())
        right_ok = not (value[-1:].isalnum() and j < len(text) and text[j].isalnum())
        if left_ok and right_ok:
            starts.append(i)
        i = text.find(value, i + 1)
    return starts


def token_span(encoded: Encoded, value: str, *, prompt_id: str = "?", field_name: str = "field",
               occurrence: int | None = None) -> tuple[int, int]:
    """Token indices [start, end) of ``value`` in the prompt, matched as whole words.

    A value that occurs more than once needs ``occurrence`` (0-based; the prompt field ``<field>_occurrence``),
    else it is refused: silently taking the first would corrupt or read the wrong tokens. A token that begins
    with whitespace before the value (" Paris" for "Paris") counts as inside the span; any other character
    outside the value inside a span token is a cut through a token and an error.
    """
    text = encoded.text
    if not value or not value.strip():
        raise SpanError(f"Prompt {prompt_id!r}: the {field_name} is empty or only whitespace.")
    found = whole_word_occurrences(text, value)
    if not found:
        if value in text:
            raise SpanError(f"Prompt {prompt_id!r}: the {field_name} {value!r} occurs only inside a word of the prompt "
                            f"{text!r}; give a whole word (or words).")
        raise SpanError(f"Prompt {prompt_id!r}: the {field_name} {value!r} does not occur in the prompt {text!r}.")
    if occurrence is None and len(found) > 1:
        raise SpanError(f"Prompt {prompt_id!r}: the {field_name} {value!r} occurs {len(found)} times in the prompt; "
                        f"say which with a {field_name + '_occurrence'!r} field (0-based).")
    k = 0 if occurrence is None else occurrence
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(found):
        raise SpanError(f"Prompt {prompt_id!r}: {field_name}_occurrence={occurrence!r}, but the {field_name} "
                        f"{value!r} occurs {len(found)} time(s).")
    c0 = found[k]
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
    if not target.strip(INVISIBLE):
        raise PromptError(f"Prompt {prompt_id!r}: the target {target!r} is only whitespace or invisible characters; "
                          "give the answer's text (usually with a leading space, e.g. ' Paris').")
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


def context_length(model: Any) -> int | None:
    """The most tokens the model takes (its ``n_ctx`` / ``max_position_embeddings``), or None if it states none."""
    n = getattr(getattr(getattr(model, "bridge", model), "cfg", None), "n_ctx", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_context(model: Any, items: Sequence[Encoded], ids: Sequence[str], *, extra: int = 0) -> None:
    """Refuse, naming the prompt, a prompt longer than the model's context (plus ``extra`` tokens to generate):
    RoPE models would run it silently past what they were trained on, GPT-2 would crash mid-compute."""
    n_ctx = context_length(model)
    if n_ctx is None:
        return
    for e, pid in zip(items, ids):
        if len(e) + extra > n_ctx:
            more = f" + {extra} new tokens" if extra else ""
            raise PromptError(f"Prompt {pid!r} has {len(e)} tokens{more}, more than the model's context of {n_ctx}; "
                              "shorten it.")


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
    check_context(model, items, prompts.ids)
    out = EncodedSet(prompts=prompts, items=items)
    for name in spans:
        out.spans[name] = [
            token_span(e, r[name], prompt_id=r["id"], field_name=name, occurrence=r.get(f"{name}_occurrence"))
            for e, r in zip(items, prompts.records)
        ]
    for name in targets:
        out.targets[name] = [
            target_token(model, e, r[name], prompt_id=r["id"]) for e, r in zip(items, prompts.records)
        ]
    return out

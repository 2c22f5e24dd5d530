"""Error types a user sees. Each one is raised before any compute, with a message that names what is wrong.

All of them subclass ``InterpError`` (itself a ``ValueError``), so research code can catch them in one place.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InterpError(ValueError):
    """Base class of every input error this package raises on purpose."""


class ModelLoadError(InterpError):
    """The model could not be loaded: missing directory, missing tokenizer, unsupported architecture, no hub."""


class DeviceError(InterpError):
    """The requested device or dtype does not exist on this machine."""


class PromptError(InterpError):
    """A prompt set or one of its records is malformed (names the prompt at fault)."""


class SpanError(PromptError):
    """A field's text is absent from its prompt or cuts through a token."""


class HookNameError(InterpError, KeyError):
    """A hook name that the model does not have (lists the close matches)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ParameterError(InterpError):
    """A method parameter out of its range or of the wrong kind."""


class TargetTokenWarning(UserWarning):
    """A target's first token does not begin a word (e.g. "Paris" after "is" scores the token "Paris" glued to the
    previous word, not " Paris"): usually a target written without its leading space."""


class ArchitectureError(InterpError):
    """A method that the model's architecture cannot run (e.g. an MoE method on a dense model)."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like ``name`` (for 'did you mean' messages)."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if not matches:
        tail = name.rsplit(".", 1)[-1]
        matches = [c for c in candidates if c.endswith(tail)][:n]
    return matches


def unknown_hook_error(name: str, candidates: Iterable[str]) -> HookNameError:
    matches = close_matches(name, candidates)
    hint = f" Close matches: {', '.join(matches)}." if matches else ""
    return HookNameError(f"The model has no hook named {name!r}.{hint}")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise a ParameterError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ParameterError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}.")


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return value


def check_layer_list(name: str, value: object, n_valid: int, *, out_of_range: str | None = None) -> list[int]:
    """Sorted distinct indices in [0, n_valid) from a list of ints; None means all of them. ``out_of_range``
    replaces the message's "is not a layer index in [0, n_valid)" for a list with its own meaning."""
    if value is None:
        return list(range(n_valid))
    try:
        out = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise ParameterError(f"{name}={value!r} must be a list of layer indices or None.") from None
    if not out:
        raise ParameterError(f"{name} is empty; give at least one layer index, or None for all.")
    for layer in out:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_valid:
            raise ParameterError(f"{name}: {layer!r} " + (out_of_range or f"is not a layer index in [0, {n_valid})")
                                 + ".")
    return sorted(set(out))


def check_positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"{name} must be a positive number; got {value!r}.")
    value = float(value)
    if not value > 0 or value != value or value == float("inf"):
        raise ParameterError(f"{name} must be a positive finite number; got {value!r}.")
    return value

"""The method registry: each method joins with its name, parameters, paper and cost in forward/backward passes.

The CLI (``interp list`` / ``interp run``) reads it, and a user's own function joins the same way::

    @interp.register_method("my_probe", paper="Me et al. 2026", cost="1 forward per prompt")
    def my_probe(model, prompts, *, layer: int = 0) -> interp.Result: ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ParameterError


@dataclass
class MethodEntry:
    name: str
    function: Callable[..., Any]
    paper: str
    cost: str
    summary: str
    parameters: dict[str, Any] = field(default_factory=dict)  # name -> default (inspect.Parameter.empty if none)
    figure: Callable[..., Any] | None = None
    family: str = ""

    def describe(self) -> str:
        params = ", ".join(
            p if d is inspect.Parameter.empty else f"{p}={d!r}" for p, d in self.parameters.items()
        )
        return f"{self.name}({params})\n    {self.summary}\n    paper: {self.paper}\n    cost: {self.cost}"


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(
    name: str,
    *,
    paper: str,
    cost: str,
    figure: Callable[..., Any] | None = None,
    family: str = "",
    replace: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add a method to the registry (its keyword parameters are read from its signature)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and not replace and _REGISTRY[name].function is not fn:
            raise ParameterError(f"A method named {name!r} is already registered (pass replace=True to override).")
        sig = inspect.signature(fn)
        params = {
            p.name: p.default
            for p in list(sig.parameters.values())[2:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[name] = MethodEntry(name, fn, paper, cost, doc.split("\n\n")[0].replace("\n", " "), params,
                                      figure, family)
        fn.registry_entry = _REGISTRY[name]  # type: ignore[attr-defined]
        return fn

    return decorate


def get_method(name: str) -> MethodEntry | None:
    return _REGISTRY.get(name)


def require_method(name: str) -> MethodEntry:
    entry = _REGISTRY.get(name)
    if entry is None:
        from .errors import close_matches

        near = close_matches(name, _REGISTRY)
        hint = f" Did you mean {', '.join(near)}?" if near else f" Known: {', '.join(sorted(_REGISTRY))}."
        raise ParameterError(f"No method named {name!r}.{hint}")
    return entry


def list_methods() -> list[MethodEntry]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]

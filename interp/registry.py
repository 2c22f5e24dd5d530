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


@dataclass(frozen=True)
class ShardPlan:
    """How :func:`interp.runs.run_resumable` and :func:`interp.distributed.run_on_ray` split a method over shards of
    the prompt set so that the merged Result is the one a single run over the whole set gives.

    ``prepare(model, prompts, params) -> params`` computes, once over the whole set and before any shard runs,
    the dataset-wide inputs a shard cannot compute alone (causal tracing's noise scale, measured on all subjects);
    the prepared parameters are recorded in the run's manifest, so a resumed run reuses them.
    ``checkpoint`` names the method's checkpoint-directory parameter, for statistics that need the whole set at
    every stage (Sahara's steps): the method then runs once over the whole set and resumes by stage
    (:mod:`interp.checkpoints`) instead of by prompt shard.
    ``paired`` names parameters holding a second prompt set paired row by row with the prompts (activation
    patching's ``corrupt``): each shard gets the same rows of it.
    ``merge(parts, meta, params) -> Result`` builds the whole set's Result from the shard Results (tables
    concatenated in shard order, ``meta`` already holding the whole set's fingerprint): it recomputes dataset-level
    fields
    (summaries, rates, counts) from the merged table, or, for a statistic of the whole set, computes it from the
    per-prompt pieces the shards returned (then ``shard_function`` is what runs on a shard, not the method).
    """

    prepare: Callable[..., dict[str, Any]] | None = None
    checkpoint: str | None = None
    paired: tuple[str, ...] = ()
    merge: Callable[..., Any] | None = None
    shard_function: Callable[..., Any] | None = None


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
    shards: ShardPlan | None = None

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
    shards: ShardPlan | None = None,
    replace: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add a method to the registry (its keyword parameters are read from its signature).

    ``shards`` says how a sharded run merges (see :class:`ShardPlan`); without it the method's rows must be per
    prompt and its ``meta`` must not summarise the dataset, so that concatenating shard tables is exact."""

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
                                      figure, family, shards)
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

"""The method registry: the contract every method declares once, and the wrapper that keeps it.

A method joins with its name, paper (arXiv ids where there are any), cost in forward / backward passes, the kind
of input it takes and the schema of the table it returns::

    @interp.register_method(
        "my_probe", paper="Me et al. 2026, arXiv 2601.00001", cost="1 forward per prompt",
        schema=interp.Schema(keys=("prompt_id", "layer"), value="score", unit="logits", sign="higher",
                             columns={"prompt_id": "str", "layer": "int", "score": "float"}))
    def my_probe(model, prompts, *, layer: int = 0) -> interp.Result: ...

What joining gives, with nothing else written:

- ``meta["method"]``, ``meta["parameters"]`` (every parameter of the bound call, defaults included) and the
  provenance (dtype, device, weights fingerprint, seed, absolute model path, package versions) are filled in by
  the registry from the call itself, never by hand; ``meta["schema"]`` records the declared schema;
- ``Result.top()``, ``pivot()`` and ``figure()`` default to the schema's value column, sign and grid;
- ``interp run NAME`` builds its options from the signature (``interp run NAME --help``);
- ``tests/test_contract.py`` runs the method on a tiny fixture and on its organism and checks the table against
  the schema, the figure, the exports, the CLI, hook hygiene and sharded == whole.

``inputs`` says what the method reads: ``"prompts"`` (one prompt set: ``fn(model, prompts, ...)``) or
``"pair"`` (a clean / corrupt pair, row by row: ``fn(model, clean, corrupt, ...)``). Views of another method's
Result (expert importance, the lens summaries) are Result methods or plain functions, not registry entries.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ParameterError
from ..results.schema import DTYPE_KINDS, SIGNS, Schema  # noqa: F401  (Schema is part of the contract)

INPUT_KINDS = ("prompts", "pair")
ENTRY_POINT_GROUP = "interp.methods"


@dataclass(frozen=True)
class ShardPlan:
    """How :func:`interp.run_resumable` and :func:`interp.runs.distributed.run_on_ray` split a method over shards of
    the prompt set so that the merged Result is the one a single run over the whole set gives.

    ``prepare(model, prompts, params) -> params`` computes, once over the whole set and before any shard runs,
    the dataset-wide inputs a shard cannot compute alone (causal tracing's noise scale, measured on all subjects).
    Keys that are parameters of the method are passed as such; any other key is a *shard input*, passed to the
    method out of band (:func:`shard_input`) so that run plumbing stays out of user signatures. Both are recorded
    in the run's manifest, so a resumed run reuses them.
    ``checkpoint``: True for statistics that need the whole set at every stage (Sahara's steps): the method then
    runs once over the whole set and resumes by stage (:mod:`interp.runs.checkpoints`), reading its stage
    directory as the shard input ``checkpoint_dir``.
    ``paired`` names parameters holding a second prompt set paired row by row with the prompts (activation
    patching's ``corrupt``): each shard gets the same rows of it.
    ``merge(parts, meta, params) -> Result`` builds the whole set's Result from the shard Results (tables
    concatenated in shard order, ``meta`` already holding the whole set's fingerprint): it recomputes dataset-level
    fields (summaries, rates, counts) from the merged table, or, for a statistic of the whole set, computes it from
    the per-prompt pieces the shards returned (then ``shard_function`` is what runs on a shard, not the method).
    """

    prepare: Callable[..., dict[str, Any]] | None = None
    checkpoint: bool = False
    paired: tuple[str, ...] = ()
    merge: Callable[..., Any] | None = None
    shard_function: Callable[..., Any] | None = None


# --- shard inputs: run plumbing passed out of band ----------------------------------------------------------
_SHARD_INPUTS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("interp_shard_inputs",
                                                                                      default=None)


@contextlib.contextmanager
def shard_inputs(**values: Any) -> Iterator[None]:
    """Within the block, :func:`shard_input` returns these values (set by the runners, never by users)."""
    token = _SHARD_INPUTS.set({**(_SHARD_INPUTS.get() or {}), **values})
    try:
        yield
    finally:
        _SHARD_INPUTS.reset(token)


def shard_input(name: str, default: Any = None) -> Any:
    """A dataset-wide input fixed by the runner of a sharded run (``default`` outside one)."""
    return (_SHARD_INPUTS.get() or {}).get(name, default)


# --- entries ------------------------------------------------------------------------------------------------
@dataclass
class MethodEntry:
    name: str
    function: Callable[..., Any]  # the registered (contract-keeping) function
    paper: str
    cost: str
    summary: str
    schema: Schema | None
    inputs: str = "prompts"
    parameters: dict[str, Any] = field(default_factory=dict)  # name -> default (inspect.Parameter.empty if none)
    annotations: dict[str, str] = field(default_factory=dict)  # name -> annotation text
    figure: Callable[..., Any] | None = None
    family: str = ""
    shards: ShardPlan | None = None
    result_class: type | None = None
    fields: tuple[str, ...] = ()  # prompt fields the method reads (besides prompt and id)
    organism: str | None = None  # the shipped organism the method is meant for ("dense" | "moe")
    corpus: str = "factual"  # the organisms' prompt kind it runs on (interp.methods.checks.CORPORA)
    example: Callable[..., dict[str, Any]] | Mapping[str, Any] | None = None  # cheap parameters for a check run
    raw: Callable[..., Any] | None = None  # the undecorated function

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("model", "prompts") if self.inputs == "prompts" else ("model", "clean", "corrupt")

    @property
    def required(self) -> list[str]:
        return [p for p, d in self.parameters.items() if d is inspect.Parameter.empty]

    def example_parameters(self, model: Any, prompts: Any) -> dict[str, Any]:
        """The cheap parameters this entry declares for a check run on ``model`` and ``prompts``."""
        if self.example is None:
            return {}
        return dict(self.example(model, prompts) if callable(self.example) else self.example)

    def bind(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Every parameter of a call (defaults applied), the inputs (model, prompts / clean) left out."""
        sig = inspect.signature(self.raw or self.function)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise ParameterError(f"{self.name}: {exc}.") from None
        bound.apply_defaults()
        skip = set(list(sig.parameters)[: len(self.input_names)])
        return {k: v for k, v in bound.arguments.items() if k not in skip}

    def describe(self) -> str:
        params = ", ".join(
            p if d is inspect.Parameter.empty else f"{p}={d!r}" for p, d in self.parameters.items()
        )
        s = self.schema
        value = f"; value: {s.value} ({s.unit}; {s.sign} matters more)" if s is not None else ""
        return (f"{self.name}({params})\n    {self.summary}\n    inputs: {self.inputs}{value}\n"
                f"    paper: {self.paper}\n    cost: {self.cost}")


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(
    name: str,
    *,
    paper: str,
    cost: str,
    schema: Schema,
    inputs: str = "prompts",
    figure: Callable[..., Any] | None = None,
    family: str = "",
    shards: ShardPlan | None = None,
    result_class: type | None = None,
    fields: tuple[str, ...] = (),
    organism: str | None = None,
    corpus: str = "factual",
    example: Callable[..., dict[str, Any]] | Mapping[str, Any] | None = None,
    replace: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add a method to the registry (its parameters are read from its signature).

    The decorated function keeps the contract: its Result's ``meta["method"]``, ``meta["parameters"]`` (the bound
    call, defaults included), ``meta["schema"]`` and the provenance come from the registry, and its table is
    checked against ``schema``. ``shards`` says how a sharded run merges (see :class:`ShardPlan`); without it the
    method's rows must be per prompt and its ``meta`` must not summarise the dataset, so that concatenating shard
    tables is exact. ``fields`` (the prompt fields it reads), ``organism`` (``"dense"`` or ``"moe"``), ``corpus``
    (the kind of prompts it is meant for, :data:`interp.methods.checks.CORPORA`) and ``example`` (cheap keyword
    parameters for a check run, or a function ``(model, prompts) -> dict`` of them) tell the contract tests how to
    run it; a docstring without an Example gets that check run as its Example (:func:`example_text`)."""
    if inputs not in INPUT_KINDS:
        raise ParameterError(f"inputs={inputs!r} is not one of {', '.join(map(repr, INPUT_KINDS))}.")
    if not isinstance(schema, Schema):
        raise ParameterError(f"register_method({name!r}): schema must be an interp.Schema, got {schema!r}.")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        raw = getattr(fn, "__wrapped__", fn) if getattr(fn, "registry_entry", None) else fn
        if name in _REGISTRY and not replace and _REGISTRY[name].raw is not raw:
            raise ParameterError(f"A method named {name!r} is already registered (pass replace=True to override).")
        sig = inspect.signature(raw)
        n_inputs = 2 if inputs == "prompts" else 3
        plist = list(sig.parameters.values())
        if len(plist) < n_inputs:
            lead = "model, prompts" if n_inputs == 2 else "model, clean, corrupt"
            raise ParameterError(f"register_method({name!r}): a method with inputs={inputs!r} takes "
                                 f"{n_inputs} leading arguments ({lead}).")
        params = {p.name: p.default for p in plist[n_inputs:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        notes = {p.name: _annotation_text(p.annotation) for p in plist[n_inputs:] if p.name in params}
        doc = inspect.getdoc(raw) or ""

        @functools.wraps(raw)
        def method(*args: Any, **kwargs: Any) -> Any:
            entry = _REGISTRY.get(name)
            if entry is None or entry.raw is not raw:  # replaced since: keep this function's own entry
                entry = own
            bound = entry.bind(*args, **kwargs)
            result = raw(*args, **kwargs)
            model = args[0] if args else kwargs.get("model")
            return finish_result(entry, result, model, bound)

        own = MethodEntry(name, method, paper, cost, doc.split("\n\n")[0].replace("\n", " "), schema, inputs,
                          params, notes, figure, family, shards, result_class, tuple(fields), organism, corpus,
                          example, raw)
        _REGISTRY[name] = own
        method.registry_entry = own  # type: ignore[attr-defined]
        if "Example" not in doc:
            method.__doc__ = (raw.__doc__ or "").rstrip() + "\n\n" + example_text(own) + "    "
        return method

    return decorate


def example_text(entry: MethodEntry) -> str:
    """An Example section for ``entry``'s docstring: the check run the contract tests make of it, on the shipped
    organism it is meant for (so the example is run by every test session and cannot go stale)."""
    first = "clean" if entry.inputs == "pair" else "prompts"
    if callable(entry.example):
        fn = entry.example
        params = f"**{fn.__module__}.{fn.__qualname__}(model, {first})"
    else:
        params = ", ".join(f"{k}={v!r}" for k, v in (entry.example or {}).items())
    organism = entry.organism or "dense"
    if entry.inputs == "pair":
        load = f'    >>> clean, corrupt = interp.methods.checks.pair_prompts(model, "{entry.corpus}")'
        call = f"interp.{entry.name}(model, clean, corrupt" + (f", {params})" if params else ")")
    else:
        load = f'    >>> prompts = interp.methods.checks.corpus_prompts("{entry.corpus}")  # held-out prompts'
        call = f"interp.{entry.name}(model, prompts" + (f", {params})" if params else ")")
    lines = ["Example (the check run of tests/test_contract.py):",
             f'    >>> model = interp.load_model(interp.data_path("organisms", "{organism}"))', load,
             f"    >>> result = {call}", "    >>> result.table.head(), result.top(), result.figure()"]
    return "\n".join("    " + line for line in lines) + "\n"


def finish_result(entry: MethodEntry, result: Any, model: Any, bound: Mapping[str, Any]) -> Any:
    """Stamp a method's Result with what the registry knows: method, bound parameters, schema, provenance."""
    from ..results.provenance import provenance
    from ..results.result import Result, jsonable_parameters

    if not isinstance(result, Result):
        raise ParameterError(f"Method {entry.name!r} returned {type(result).__name__}, not an interp.Result.")
    if entry.result_class is not None and not isinstance(result, entry.result_class):
        result = entry.result_class(result.table, result.meta)
    meta = dict(result.meta)
    meta["method"] = entry.name
    meta["parameters"] = jsonable_parameters(bound)
    if entry.schema is not None:
        meta["schema"] = entry.schema.to_dict()
        entry.schema.check(result.table, where=f"{entry.name}'s table")
    if _is_model(model):
        meta.update(provenance(model, seed=bound.get("seed")))
    result.meta = meta
    return result


def _is_model(model: Any) -> bool:
    from ..model.loading import Model

    return isinstance(model, Model) or (hasattr(model, "hook_dict") and hasattr(model, "original_model"))


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def get_method(name: str) -> MethodEntry | None:
    if name not in _REGISTRY:
        load_entry_points()
    return _REGISTRY.get(name)


def require_method(name: str) -> MethodEntry:
    entry = get_method(name)
    if entry is None:
        from ..errors import close_matches

        near = close_matches(name, _REGISTRY)
        hint = f" Did you mean {', '.join(near)}?" if near else f" Known: {', '.join(sorted(_REGISTRY))}."
        raise ParameterError(f"No method named {name!r}.{hint}")
    return entry


def list_methods() -> list[MethodEntry]:
    load_entry_points()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


_ENTRY_POINTS_LOADED = False


def load_entry_points() -> None:
    """Import the modules that installed packages declare in the ``interp.methods`` entry-point group (once), so
    their methods join the registry (``[project.entry-points."interp.methods"] my_probe = "my_pkg.probes"``)."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not break the registry; say which one
            import warnings

            warnings.warn(f"interp: the entry point {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)

"""Hooks that compose, and the one context manager that runs a model with them and always removes them.

An :class:`Edit` changes one hook's value in place on a private copy, for some batch rows; an
:class:`Intervention` is a labelled tuple of edits, and ``a + b`` composes two. :func:`hooked` registers the
edits (all edits of one hook point share one torch hook and one copy of the activation) and readers (which keep
the value after the edits), and removes exactly the handles it added when the block ends, also on an exception:
afterwards the model has the hooks it had before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import unknown_hook_error

EditFn = Callable[[torch.Tensor, slice], None]
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(name: str) -> int:
    """The block index a hook name belongs to; -1 for hooks before the first block (embeddings)."""
    m = _LAYER.match(name)
    if m:
        return int(m.group(1))
    if name.startswith(("hook_embed", "embed", "hook_pos_embed", "pos_embed", "rotary")):
        return -1
    return 10**9  # after the last block (ln_final, unembed)


@dataclass(frozen=True)
class Edit:
    """Change hook ``name``'s value: ``apply(t, rows)`` edits ``t[rows]`` in place (``t`` is already a copy).

    ``first_column`` (for hooks laid out [batch, position, ...]) declares the edit *position-wise from that
    column*: it leaves columns < first_column as they are, and its new value at column j depends only on the old
    value at column j (negative: counted from the end, -1 = the last column). The variants engine then runs a
    variant whose first change is at column c only on columns >= c, on the reference run's cached keys and
    values. None (the default): unknown, so the engine recomputes every column.
    """

    name: str
    apply: EditFn
    rows: slice = field(default_factory=lambda: slice(None))
    first_column: int | None = None

    @property
    def layer(self) -> int:
        return hook_layer(self.name)

    def on_rows(self, rows: slice) -> Edit:
        return replace(self, rows=_compose_rows(self.rows, rows))


@dataclass(frozen=True)
class Intervention:
    """A labelled set of edits. ``a + b`` applies both; ``.on_rows(rows)`` restricts it to batch rows."""

    edits: tuple[Edit, ...] = ()
    label: str = "clean"
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    def __add__(self, other: Intervention) -> Intervention:
        label = other.label if self.label == "clean" else self.label if other.label == "clean" else (
            f"{self.label} + {other.label}"
        )
        return Intervention(self.edits + other.edits, label, {**self.params, **other.params})

    @property
    def first_layer(self) -> int:
        """The first block whose computation this intervention changes (10**9 when it changes nothing)."""
        return min((e.layer for e in self.edits), default=10**9)

    def on_rows(self, rows: slice) -> Intervention:
        return Intervention(tuple(e.on_rows(rows) for e in self.edits), self.label, self.params)

    @classmethod
    def from_function(cls, name: str, fn: Callable[[torch.Tensor], torch.Tensor], label: str = "custom"):
        """Wrap a plain function of the hook's value (returning the new value) as an intervention."""

        def apply(t: torch.Tensor, rows: slice) -> None:
            t[rows] = fn(t[rows])

        return cls((Edit(name, apply),), label)


CLEAN = Intervention()


def _compose_rows(outer: slice, inner: slice) -> slice:
    """Rows ``inner`` of the block ``outer`` (both plain step-1 slices)."""
    if outer == slice(None):
        return inner
    if inner == slice(None):
        return outer
    start = (outer.start or 0) + (inner.start or 0)
    stop = (outer.start or 0) + inner.stop if inner.stop is not None else outer.stop
    return slice(start, stop)


def resolve_hook(model: Any, name: str, hook_dict: dict[str, Any] | None = None) -> torch.nn.Module:
    """The HookPoint module for ``name``; an unknown name lists the close matches. ``hook_dict``: the bridge's
    ``hook_dict`` when the caller already has it (building it costs ~0.1 ms per access)."""
    if hook_dict is None:
        hook_dict = getattr(model, "bridge", model).hook_dict
    if name not in hook_dict:
        raise unknown_hook_error(name, hook_dict.keys())
    return hook_dict[name]


def check_hook_names(model: Any, names: Iterable[str]) -> list[str]:
    names = list(names)
    for n in names:
        resolve_hook(model, n)
    return names


class StopForward(Exception):
    """Raised by a reader to end a forward pass early (everything after it is not needed)."""


@contextmanager
def hooked(
    model: Any,
    interventions: Iterable[Intervention | Edit] = (),
    *,
    read: Sequence[str] = (),
    keep_grad: bool = False,
    read_fn: Callable[[str, torch.Tensor], Any] | None = None,
    stop_after: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Run the body with the interventions' edits applied and the ``read`` hooks recorded.

    Yields a dict that fills with ``{hook_name: value}`` as the forward runs (the value after the edits;
    detached unless ``keep_grad``; ``read_fn(name, value)`` may reduce it, e.g. to the last position, before it
    is stored). ``stop_after``: a read hook after which the forward stops by raising :class:`StopForward`
    (the caller catches it around the forward), so nothing past it is computed. Every handle added is removed
    on exit, also when the body raises.
    """
    edits: list[Edit] = []
    for item in interventions:
        edits.extend(item.edits if isinstance(item, Intervention) else (item,))
    by_module: dict[int, tuple[torch.nn.Module, list[str], list[Edit]]] = {}
    hook_dict = getattr(model, "bridge", model).hook_dict  # once: the bridge rebuilds it on every access
    for e in edits:
        mod = resolve_hook(model, e.name, hook_dict)
        by_module.setdefault(id(mod), (mod, [], []))[2].append(e)
    for name in read:
        mod = resolve_hook(model, name, hook_dict)
        by_module.setdefault(id(mod), (mod, [], []))[1].append(name)
    if stop_after is not None and stop_after not in read:
        raise ValueError("stop_after must be one of the read hooks")

    store: dict[str, Any] = {}
    handles = []

    def make_hook(readers: list[str], mod_edits: list[Edit], conversion: Any):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor):
                return None
            # some aliased hooks hold a raw tensor (e.g. gpt2's hook_z is attn.o's flat input): view it the way
            # TransformerLens names it ([b, pos, head, d_head]) and hand the edited value back in the raw layout
            value = conversion.convert(output) if conversion is not None else output
            if mod_edits:
                value = value.clone()
                for e in mod_edits:
                    e.apply(value, e.rows)
            for name in readers:
                kept = value if keep_grad else value.detach()
                store[name] = read_fn(name, kept) if read_fn is not None else kept
            if stop_after is not None and stop_after in readers:
                raise StopForward
            if not mod_edits:
                return None
            return conversion.revert(value) if conversion is not None else value

        return hook

    try:
        for mod, readers, mod_edits in by_module.values():
            conversion = getattr(mod, "hook_conversion", None)
            handles.append(mod.register_forward_hook(make_hook(readers, mod_edits, conversion)))
        yield store
    finally:
        for h in handles:
            h.remove()


def hook_snapshot(model: Any) -> dict[str, tuple]:
    """Every hook registered on the model's modules (torch hooks and TransformerLens HookPoint lists)."""
    bridge = getattr(model, "bridge", model)
    snap = {}
    for name, mod in bridge.named_modules():
        entry = (
            tuple(mod._forward_hooks.keys()),
            tuple(mod._forward_pre_hooks.keys()),
            tuple(mod._backward_hooks.keys()),
            tuple(getattr(mod, "_backward_pre_hooks", {}).keys()),
            len(getattr(mod, "fwd_hooks", []) or []),
            len(getattr(mod, "bwd_hooks", []) or []),
        )
        if any(entry):
            snap[name] = entry
    return snap

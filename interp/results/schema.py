"""A method's table schema: the key columns, the value column with its unit and sign, every column's kind.

Declared once per method at registration (:func:`interp.register_method`), recorded in ``meta["schema"]`` and
read back with a Result, so ``top()``, ``pivot()`` and ``figure()`` know their defaults without the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ParameterError

SIGNS = ("higher", "lower", "magnitude")
DTYPE_KINDS = ("int", "float", "str", "bool")


@dataclass(frozen=True)
class Schema:
    """A method's table, declared once.

    ``keys``: the columns that identify a row (unique together). ``value``: the column holding the method's
    headline number, in ``unit``; ``sign`` says which values matter more: ``"higher"``, ``"lower"`` or
    ``"magnitude"`` (larger absolute value). ``columns``: every column the table always has, with its kind
    (``int``, ``float``, ``str``, ``bool``); keys and value included. ``optional``: columns present only in some
    calls (e.g. ``task`` when the prompts carry one), with their kinds. ``units``: the units of other numeric
    columns. ``grid``: the (index, columns) of the default ``pivot()`` (e.g. ``("layer", "head")``); None takes
    the first two keys after ``prompt_id``.
    """

    keys: tuple[str, ...]
    value: str
    unit: str
    sign: str
    columns: Mapping[str, str]
    optional: Mapping[str, str] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    grid: tuple[str, str | None] | None = None

    def __post_init__(self) -> None:
        if self.sign not in SIGNS:
            raise ParameterError(f"Schema sign={self.sign!r} is not one of {', '.join(map(repr, SIGNS))}.")
        for name, kind in {**self.columns, **self.optional}.items():
            if kind not in DTYPE_KINDS:
                raise ParameterError(f"Schema column {name!r}: kind {kind!r} is not one of {', '.join(DTYPE_KINDS)}.")
        for name in (*self.keys, self.value):
            if name not in self.columns and name not in self.optional:
                raise ParameterError(f"Schema: key / value column {name!r} is not among the declared columns.")
        if self.columns.get(self.value, self.optional.get(self.value)) not in ("float", "int", "bool"):
            raise ParameterError(f"Schema: the value column {self.value!r} must be numeric.")

    @property
    def pivot_axes(self) -> tuple[str, str | None]:
        if self.grid is not None:
            return self.grid
        rest = [k for k in self.keys if k != "prompt_id"] or list(self.keys)
        return rest[0], (rest[1] if len(rest) > 1 else None)

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "value": self.value, "unit": self.unit, "sign": self.sign,
                "columns": dict(self.columns), "optional": dict(self.optional), "units": dict(self.units),
                "grid": list(self.grid) if self.grid is not None else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        grid = d.get("grid")
        return cls(keys=tuple(d["keys"]), value=d["value"], unit=d["unit"], sign=d["sign"],
                   columns=dict(d["columns"]), optional=dict(d.get("optional", {})), units=dict(d.get("units", {})),
                   grid=tuple(grid) if grid is not None else None)  # type: ignore[arg-type]

    def check(self, table: Any, *, where: str = "table") -> None:
        """Raise a ParameterError naming what in ``table`` breaks the schema (missing, extra or mistyped columns)."""
        import pandas as pd

        cols = list(table.columns)
        missing = [c for c in self.columns if c not in cols]
        extra = [c for c in cols if c not in self.columns and c not in self.optional]
        if missing or extra:
            raise ParameterError(f"{where}: columns {cols} break the declared schema (missing {missing}, "
                                 f"undeclared {extra}).")
        if not len(table):  # an empty table has no dtypes to speak of
            return
        for c in cols:
            kind = self.columns.get(c, self.optional.get(c))
            s = table[c]
            ok = {
                "int": pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s),
                "float": pd.api.types.is_float_dtype(s),
                "bool": pd.api.types.is_bool_dtype(s),
                "str": pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s),
            }[kind]
            if not ok:
                raise ParameterError(f"{where}: column {c!r} has dtype {s.dtype}, the schema says {kind}.")

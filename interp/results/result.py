"""Result: every method's output, a tidy pandas table plus metadata, exportable and readable back exactly.

``.table`` is long format (one row per prompt x component x position ...; the columns each method declares in its
registry :class:`~interp.Schema`); ``.meta`` records the method, every parameter of the call, the schema,
the model (absolute path, weights fingerprint, dtype, device), the seed, the dataset fingerprint, the package
versions and the time. CSV (with a ``.meta.json`` sidecar), Parquet (metadata in the schema) and JSON round-trip
the values, dtypes, metadata and the Result's class (e.g. :class:`~interp.methods.lens.LensResult`) exactly
through :meth:`Result.read`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InterpError

_META_KEY = b"interp"
_CSV_NA = "<NA>"  # missing values in CSV; an empty string stays an empty string
_RESULT_CLASSES: dict[str, type[Result]] = {}


def _jsonable(value: Any) -> Any:
    """Parameters as JSON values (tensors and tuples become lists, objects their repr)."""
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def jsonable_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A bound call's parameters as JSON values: a prompt set is recorded by its fingerprint, a Result by its
    method and row count, a tensor by its shape, dtype and a content hash, a callable by its qualified name."""
    return {str(k): _prompt_set_value(v) if _holds_prompts(k) else _parameter_value(v) for k, v in params.items()}


def _holds_prompts(name: str) -> bool:
    """Parameters that hold a further prompt set (a pair's ``corrupt``, ``subtask_prompts`` ...)."""
    return name == "corrupt" or name.endswith("_prompts")


def _prompt_set_value(value: Any) -> Any:
    """A prompt set given in any form (PromptSet, list of dicts or strings, a file) is recorded by its content."""
    from ..prompts import PromptSet

    if value is None:
        return None
    try:
        ps = value if isinstance(value, PromptSet) else PromptSet(value)
    except Exception:  # not a prompt set after all: record it as it is
        return _parameter_value(value)
    return {"prompt_set": ps.fingerprint(), "n_prompts": len(ps)}


def _parameter_value(value: Any) -> Any:
    from ..prompts import PromptSet

    if isinstance(value, PromptSet):
        return {"prompt_set": value.fingerprint(), "n_prompts": len(value)}
    if isinstance(value, Result):
        return {"result": value.method, "n_rows": len(value.table)}
    if hasattr(value, "detach") and hasattr(value, "shape"):  # a tensor
        t = value.detach().cpu().contiguous()
        digest = hashlib.sha256(t.reshape(-1).view(-1).numpy().tobytes() if t.numel() else b"").hexdigest()[:16]
        return {"tensor": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "sha256": digest}
    if isinstance(value, (list, tuple)) and any(hasattr(v, "detach") for v in value):
        return [_parameter_value(v) for v in value]
    if callable(value) and not isinstance(value, type):
        return {"callable": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"}
    return _jsonable(value)


def make_meta(method: str | None = None, model: Any = None, prompts: Any = None, params: dict | None = None,
              **extra: Any) -> dict:
    """The standard metadata of a result. A registered method needs only ``model``, ``prompts`` and its own extra
    fields: the registry fills in ``method``, ``parameters`` (the bound call), the schema and the provenance."""
    from .provenance import provenance, versions

    meta: dict[str, Any] = {
        "method": method or "",
        "parameters": jsonable_parameters(params or {}),
        "package_version": versions()["interp_version"],
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(versions())
    if model is not None:
        meta.update(provenance(model))
    if prompts is not None:
        meta["dataset_fingerprint"] = prompts.fingerprint()
        meta["n_prompts"] = len(prompts)
    meta.update(_jsonable(extra))
    return meta


def concat_tables(parts: list[Result]) -> pd.DataFrame:
    """The rows of several Results (shards of one run), in order; shards with no rows are skipped."""
    tables = [p.table for p in parts if len(p.table)]
    return pd.concat(tables, ignore_index=True) if tables else parts[0].table.iloc[0:0].copy()


class Result:
    """A method's output: ``table`` (tidy DataFrame) and ``meta`` (dict).

    Subclasses (a method's own views, e.g. ``LensResult.aggregate()``) are remembered by name, so
    :meth:`Result.read` and the sharded runners give back the class that was written."""

    def __init__(self, table: pd.DataFrame, meta: dict[str, Any]):
        self.table = table.reset_index(drop=True)
        self.meta = dict(meta)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _RESULT_CLASSES[cls.__name__] = cls

    @property
    def method(self) -> str:
        return str(self.meta.get("method", ""))

    @property
    def schema(self) -> Any:
        """The method's declared :class:`~interp.Schema` (from the registry, else from ``meta``), or None."""
        from ..methods.registry import get_method
        from .schema import Schema

        entry = get_method(self.method) if self.method else None
        if entry is not None:
            return entry.schema
        if isinstance(self.meta.get("schema"), dict):
            return Schema.from_dict(self.meta["schema"])
        return None

    def __repr__(self) -> str:
        return f"Result({self.method}: {len(self.table)} rows; columns {list(self.table.columns)})"

    def _repr_html_(self) -> str:  # notebooks
        return f"<p><b>{self.method}</b> ({len(self.table)} rows)</p>" + self.table.head(20).to_html()

    # --- views --------------------------------------------------------------------------------------------
    def top(self, k: int = 10, by: str | None = None, *, ascending: bool | None = None) -> pd.DataFrame:
        """The k rows that matter most: by the schema's value column and sign (``"higher"``: largest first,
        ``"lower"``: smallest first, ``"magnitude"``: largest absolute value first), or by the column ``by``."""
        schema = self.schema
        if by is None:
            if schema is None:
                raise KeyError(f"{self.method or 'This result'} declares no schema: name the column, top(k, by=...); "
                               f"columns are {list(self.table.columns)}.")
            by = schema.value
        if by not in self.table.columns:
            raise KeyError(f"No column {by!r}; columns are {list(self.table.columns)}.")
        sign = schema.sign if schema is not None and by == schema.value else "higher"
        if ascending is None:
            ascending = sign == "lower"
        if sign == "magnitude" and by == getattr(schema, "value", None):
            order = self.table[by].abs().sort_values(ascending=ascending, kind="stable").index
            return self.table.loc[order].head(k).reset_index(drop=True)
        return self.table.sort_values(by, ascending=ascending, kind="stable").head(k).reset_index(drop=True)

    def pivot(self, index: str | list[str] | None = None, columns: str | list[str] | None = None,
              values: str | None = None, aggfunc: str = "mean") -> pd.DataFrame:
        """A wide view, by default the schema's grid (e.g. layer x head) of the mean value over the other keys."""
        schema = self.schema
        if schema is not None:
            grid_index, grid_columns = schema.pivot_axes
            index = grid_index if index is None else index
            columns = grid_columns if columns is None else columns
            values = schema.value if values is None else values
        if index is None or values is None:
            raise KeyError("This result declares no schema: name index=, columns= and values=.")
        if columns is None:
            return self.table.groupby(index)[values].agg(aggfunc).to_frame()
        # dropna=False: a cell whose value is undefined (NaN) stays in the grid as NaN instead of vanishing
        return self.table.pivot_table(index=index, columns=columns, values=values, aggfunc=aggfunc, dropna=False)

    # --- statistics over prompts (interp.results.statistics) ----------------------------------------------
    def aggregate(self, by: str | list[str] | None = None, *, value: str | list[str] | None = None,
                  ci: float = 0.95, n_boot: int = 2000, seed: int = 0, interval: str = "bca") -> Result:
        """The mean over prompts per group, with a seeded bootstrap confidence interval (prompts resampled).

        Args:
            by: the columns grouped by (None: the schema's keys other than prompt_id, e.g. layer and head).
            value: the column(s) averaged (None: the schema's value; booleans average to a share).
            ci: the interval's confidence level.
            n_boot: bootstrap replicates.
            seed: the seed of the replicates' draws (the same seed, the same interval).
            interval: "bca" (bias-corrected and accelerated, Efron 1987; default) or "percentile".

        Returns: a Result with one row per group: the ``by`` columns, n_prompts, and for each value column
        ``<value>`` (its mean over the group's rows), ``<value>_ci_low`` and ``<value>_ci_high``. A prompt with
        several rows in a group (e.g. several heads with by="layer") is one resampling unit. Exports and reads
        back like any Result. See :mod:`interp.results.statistics`. Cost: no forward; one
        [groups x prompts] x [prompts x n_boot] product.
        """
        from .statistics import aggregate

        return aggregate(self, by, value=value, ci=ci, n_boot=n_boot, seed=seed, interval=interval)

    def compare(self, column: str, baseline: Any, *, treatment: Any = None, value: str | None = None,
                by: str | list[str] | None = None, ci: float = 0.95, n_boot: int = 2000, n_perm: int = 10_000,
                seed: int = 0, interval: str = "bca") -> Result:
        """Two conditions of one method compared prompt by prompt: the mean paired difference with its bootstrap
        interval and a two-sided sign-flip permutation test of no difference.

        ``column`` names the condition (block_experts: ``compare("condition", "control", treatment="blocked")``,
        blocked vs the mean of the random controls; attack_success_rate: ``compare("variant", "clean")``;
        context_masking: ``compare("from_layer", n_layers)``, each masked layer vs unmasked;
        shared_routed_contrast: ``compare("condition", "clean")``). A prompt's value under a condition is its mean
        over that condition's rows (e.g. over the control sets); prompts seen under both are paired.

        Args:
            column: the column whose values are the conditions.
            baseline: its value for the baseline condition.
            treatment: one value or a list of them (None: every other value of ``column``).
            value: the column compared (None: the schema's value).
            by: optional further grouping columns (e.g. "target_field").
            ci, n_boot, seed, interval: as in :meth:`aggregate`.
            n_perm: random sign patterns of the test (exact enumeration when 2^n_pairs <= n_perm).

        Returns: a Result with one row per group x treatment: treatment, baseline, n_pairs, treatment_mean,
        baseline_mean, difference (treatment - baseline), difference_ci_low, difference_ci_high, p_value.
        Cost: no forward.
        """
        from .statistics import compare

        return compare(self, column, baseline, treatment=treatment, value=value, by=by, ci=ci, n_boot=n_boot,
                       n_perm=n_perm, seed=seed, interval=interval)

    def figure(self, **kwargs: Any) -> Any:
        """The method's plotly figure (declared per method in the registry; a bar chart of ``top()`` otherwise)."""
        from ..methods.registry import get_method

        entry = get_method(self.method) if self.method else None
        if entry is None or entry.figure is None:
            from ..figures.viz import bar_top

            return bar_top(self, **kwargs)
        return entry.figure(self, **kwargs)

    def save_figure(self, path: str | Path, **kwargs: Any) -> Path:
        """Save ``figure(**kwargs)`` for a paper: ``.html`` (JavaScript inlined) always; ``.png`` / ``.svg`` /
        ``.pdf`` with the optional extra ``interp[figures]`` (kaleido, using the system Chromium)."""
        from ..figures.viz import save_figure

        return save_figure(self.figure(**kwargs), path)

    # --- export -------------------------------------------------------------------------------------------
    def _dtypes(self) -> dict[str, str]:
        return {c: str(t) for c, t in self.table.dtypes.items()}

    def to_csv(self, path: str | Path) -> Path:
        """CSV of the table (floats written exactly) and ``<path>.meta.json`` with the metadata, dtypes, row count
        and a hash of the CSV's bytes, so :meth:`read` refuses a CSV and a sidecar that do not belong together.

        Text cells a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a
        carriage return) are written with a leading ``'``, as is any text cell that starts with ``'`` or is the
        literal ``<NA>`` (the CSV's missing-value marker); :meth:`read` drops that one ``'``, so the round trip is
        exact. Both files are written atomically (the CSV first)."""
        from .atomic import atomic_path, write_text

        path = Path(path)
        check_exportable(self.table)
        # "\r\n" rows: the csv writer then quotes any field holding a lone "\r" or "\n" (tokens do)
        data = _escape_text_cells(self.table).to_csv(index=False, float_format="%.17g", na_rep=_CSV_NA,
                                                       lineterminator="\r\n").encode("utf-8")
        sidecar = {"meta": self.meta, "dtypes": self._dtypes(), "columns": list(self.table.columns),
                   "result_class": type(self).__name__, "n_rows": len(self.table),
                   "csv_sha256": hashlib.sha256(data).hexdigest(), "csv_escape": CSV_ESCAPE}
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        write_text(Path(str(path) + ".meta.json"), json.dumps(sidecar, indent=1))
        return path

    def to_parquet(self, path: str | Path) -> Path:
        """Parquet with the metadata stored in the schema's key-value metadata (written atomically)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .atomic import atomic_path

        path = Path(path)
        check_exportable(self.table)
        tbl = pa.Table.from_pandas(self.table, preserve_index=False)
        extra = json.dumps({"meta": self.meta, "dtypes": self._dtypes(), "result_class": type(self).__name__,
                            "n_rows": len(self.table)}).encode()
        tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}), _META_KEY: extra})
        with atomic_path(path) as tmp:
            pq.write_table(tbl, tmp)
        return path

    def to_json(self, path: str | Path) -> Path:
        """One JSON document: meta, dtypes and the columns (floats as shortest exact repr; NaN kept); atomic."""
        from .atomic import write_text

        path = Path(path)
        check_exportable(self.table)
        columns = {c: [_plain(v) for v in self.table[c].tolist()] for c in self.table.columns}
        doc = {"meta": self.meta, "dtypes": self._dtypes(), "columns": list(self.table.columns), "data": columns,
               "result_class": type(self).__name__, "n_rows": len(self.table)}
        write_text(path, json.dumps(doc))
        return path

    def save(self, directory: str | Path, name: str | None = None) -> dict[str, Path]:
        """CSV + Parquet + JSON side by side in ``directory``."""
        directory = Path(directory)
        stem = name or self.method or "result"
        return {
            "csv": self.to_csv(directory / f"{stem}.csv"),
            "parquet": self.to_parquet(directory / f"{stem}.parquet"),
            "json": self.to_json(directory / f"{stem}.json"),
        }

    @classmethod
    def read(cls, path: str | Path) -> Result:
        """Read a result written by to_csv, to_parquet or to_json (by extension)."""
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                tbl = pq.read_table(path)
            except Exception as exc:  # pyarrow's own errors (ArrowInvalid ...) name no file
                raise ResultFileError(f"{str(path)!r} is not a readable Parquet file ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}).") from exc
            extra = json.loads((tbl.schema.metadata or {}).get(_META_KEY, b"{}"))
            table = tbl.to_pandas()
            _check_rows(path, len(table), extra.get("n_rows"))
            return _result_class(cls, extra)(_restore(table, extra.get("dtypes", {})), extra.get("meta", {}))
        if path.suffix == ".json":
            doc = _read_json(path)
            table = pd.DataFrame({c: doc["data"][c] for c in doc["columns"]}, columns=doc["columns"])
            _check_rows(path, len(table), doc.get("n_rows"))
            return _result_class(cls, doc)(_restore(table, doc["dtypes"]), doc["meta"])
        if path.suffix == ".csv":
            import io

            sidecar_path = Path(str(path) + ".meta.json")
            if not sidecar_path.exists():
                raise ResultFileError(f"{str(path)!r} has no metadata sidecar {sidecar_path.name!r}; a CSV written by "
                                      "interp always has one.")
            sidecar = _read_json(sidecar_path)
            data = path.read_bytes()
            expected = sidecar.get("csv_sha256")
            if expected is not None and hashlib.sha256(data).hexdigest() != expected:
                raise ResultFileError(f"{str(path)!r} and its sidecar {sidecar_path.name!r} do not belong together "
                                      "(the CSV's content hash differs from the one the sidecar recorded): one of "
                                      "them was cut short, edited or replaced.")
            dtypes = sidecar["dtypes"]
            str_cols = {c: str for c, t in dtypes.items() if t in ("object", "str", "string")}
            table = pd.read_csv(io.BytesIO(data), dtype=str_cols, keep_default_na=False, na_values=[_CSV_NA])
            if sidecar.get("csv_escape") == CSV_ESCAPE:
                table = _unescape_text_cells(table, [c for c in str_cols if c in table.columns])
            _check_rows(path, len(table), sidecar.get("n_rows"))
            return _result_class(cls, sidecar)(_restore(table, dtypes), sidecar["meta"])
        raise ResultFileError(f"Cannot read {str(path)!r}: expected a .csv, .parquet or .json file.")


CSV_ESCAPE = "leading-quote-v1"  # the reversible rule of to_csv for formula-like text cells
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


class ResultFileError(InterpError):
    """A result file that cannot be read back as written (truncated, mismatched sidecar, not interp's)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{str(path)!r} is not valid JSON ({exc}); was it cut short?") from exc


def _check_rows(path: Path, n: int, expected: Any) -> None:
    if expected is not None and n != expected:
        raise ResultFileError(f"{str(path)!r} holds {n} rows where its metadata records {expected}: the file was "
                              "cut short or its metadata belongs to another table.")


def _needs_escape(v: Any) -> bool:
    return isinstance(v, str) and (v == _CSV_NA or v.startswith(_FORMULA_START))


def _escape_text_cells(table: pd.DataFrame) -> pd.DataFrame:
    out = table
    for c in table.columns:
        col = table[c]
        if (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)) and col.map(_needs_escape).any():
            if out is table:
                out = table.copy()
            out[c] = col.map(lambda v: "'" + v if _needs_escape(v) else v).astype(col.dtype)
    return out


def _unescape_text_cells(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for c in columns:
        col = table[c]
        table[c] = col.map(lambda v: v[1:] if isinstance(v, str) and v.startswith("'") else v)
    return table


def _kind(v: Any) -> str:
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return "bool"
    if isinstance(v, str):
        return "text"
    if isinstance(v, (int, float)) or hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0:
        return "number"
    if isinstance(v, (list, tuple, dict)) or hasattr(v, "tolist"):
        return "container"
    return type(v).__name__


def check_exportable(table: pd.DataFrame) -> None:
    """Refuse, naming the column, a table that the exports cannot hold exactly: a column mixing kinds of values
    (text in some rows, numbers in others ...) or holding objects that are not text, numbers, booleans, arrays or
    missing values. Called before anything is written."""
    for c in table.columns:
        col = table[c]
        if not pd.api.types.is_object_dtype(col):
            continue
        kinds = {_kind(v) for v in col.tolist() if v is not None and not (isinstance(v, float) and v != v)}
        odd = kinds - {"bool", "text", "number", "container"}
        if len(kinds) > 1 or odd:
            raise ResultFileError(f"Column {c!r} holds values of several kinds ({', '.join(sorted(kinds))}), which "
                                  "CSV and Parquet cannot round-trip: make it one kind (e.g. text) first.")


def _result_class(cls: type[Result], doc: Mapping[str, Any]) -> type[Result]:
    """The class a file was written from (when this process knows it), else the class ``read`` was called on."""
    found = _RESULT_CLASSES.get(str(doc.get("result_class", "")))
    return found if found is not None and issubclass(found, cls) else cls


def _plain(v: Any) -> Any:
    if v is pd.NA:  # missing value of a nullable column (Int64, boolean)
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _restore(table: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    for col, dtype in dtypes.items():
        if col not in table.columns:
            continue
        if dtype in ("object", "str", "string"):
            table[col] = table[col].astype(object).where(table[col].notna(), None)
            if dtype != "object":
                table[col] = table[col].astype(dtype)
        else:
            try:
                table[col] = table[col].astype(dtype)
            except (TypeError, ValueError):
                pass
    return table

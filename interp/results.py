"""Result: every method's output, a tidy pandas table plus metadata, exportable and readable back exactly.

``.table`` is long format (one row per prompt x component x position ...; columns like prompt_id, layer, head,
expert, position, token, score); ``.meta`` records model, method, parameters, dataset fingerprint, package
version and time. CSV (with a ``.meta.json`` sidecar), Parquet (metadata in the schema) and JSON round-trip the
values, dtypes and metadata exactly through :meth:`Result.read`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__

_META_KEY = b"interp"
_CSV_NA = "<NA>"  # missing values in CSV; an empty string stays an empty string


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


def make_meta(method: str, model: Any = None, prompts: Any = None, params: dict | None = None, **extra: Any) -> dict:
    """The standard metadata of a result."""
    import torch
    import transformer_lens

    meta: dict[str, Any] = {
        "method": method,
        "parameters": _jsonable(params or {}),
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "transformer_lens_version": getattr(transformer_lens, "__version__", "unknown"),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if model is not None:
        meta["model"] = getattr(model, "name", str(model))
        info = getattr(model, "info", None)
        if info is not None:
            meta["architecture"] = info.architecture
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
    """A method's output: ``table`` (tidy DataFrame) and ``meta`` (dict)."""

    def __init__(self, table: pd.DataFrame, meta: dict[str, Any]):
        self.table = table.reset_index(drop=True)
        self.meta = dict(meta)

    @property
    def method(self) -> str:
        return str(self.meta.get("method", ""))

    def __repr__(self) -> str:
        return f"Result({self.method}: {len(self.table)} rows; columns {list(self.table.columns)})"

    def _repr_html_(self) -> str:  # notebooks
        return f"<p><b>{self.method}</b> ({len(self.table)} rows)</p>" + self.table.head(20).to_html()

    # --- views --------------------------------------------------------------------------------------------
    def top(self, k: int = 10, by: str = "score", *, ascending: bool = False) -> pd.DataFrame:
        """The k rows with the largest (or smallest) ``by``."""
        if by not in self.table.columns:
            raise KeyError(f"No column {by!r}; columns are {list(self.table.columns)}.")
        return self.table.sort_values(by, ascending=ascending, kind="stable").head(k).reset_index(drop=True)

    def pivot(self, index: str | list[str] = "layer", columns: str | list[str] = "head", values: str = "score",
              aggfunc: str = "mean") -> pd.DataFrame:
        """A wide view, e.g. the layer x head grid of the mean score."""
        return self.table.pivot_table(index=index, columns=columns, values=values, aggfunc=aggfunc)

    def figure(self, **kwargs: Any) -> Any:
        """The method's plotly figure (defined per method in the registry)."""
        from .registry import get_method

        entry = get_method(self.method) if self.method else None
        if entry is None or entry.figure is None:
            from .viz import bar_top

            return bar_top(self, **kwargs)
        return entry.figure(self, **kwargs)

    # --- export -------------------------------------------------------------------------------------------
    def _dtypes(self) -> dict[str, str]:
        return {c: str(t) for c, t in self.table.dtypes.items()}

    def to_csv(self, path: str | Path) -> Path:
        """CSV of the table (floats written exactly) and ``<path>.meta.json`` with the metadata and dtypes."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # "\r\n" rows: the csv writer then quotes any field holding a lone "\r" or "\n" (tokens do)
        self.table.to_csv(path, index=False, float_format="%.17g", na_rep=_CSV_NA, lineterminator="\r\n")
        sidecar = {"meta": self.meta, "dtypes": self._dtypes(), "columns": list(self.table.columns)}
        Path(str(path) + ".meta.json").write_text(json.dumps(sidecar, indent=1))
        return path

    def to_parquet(self, path: str | Path) -> Path:
        """Parquet with the metadata stored in the schema's key-value metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tbl = pa.Table.from_pandas(self.table, preserve_index=False)
        extra = json.dumps({"meta": self.meta, "dtypes": self._dtypes()}).encode()
        tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}), _META_KEY: extra})
        pq.write_table(tbl, path)
        return path

    def to_json(self, path: str | Path) -> Path:
        """One JSON document: meta, dtypes and the columns (floats as shortest exact repr; NaN kept)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = {c: [_plain(v) for v in self.table[c].tolist()] for c in self.table.columns}
        doc = {"meta": self.meta, "dtypes": self._dtypes(), "columns": list(self.table.columns), "data": columns}
        path.write_text(json.dumps(doc))
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

            tbl = pq.read_table(path)
            extra = json.loads((tbl.schema.metadata or {}).get(_META_KEY, b"{}"))
            table = tbl.to_pandas()
            return cls(_restore(table, extra.get("dtypes", {})), extra.get("meta", {}))
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            table = pd.DataFrame({c: doc["data"][c] for c in doc["columns"]}, columns=doc["columns"])
            return cls(_restore(table, doc["dtypes"]), doc["meta"])
        if path.suffix == ".csv":
            sidecar = json.loads(Path(str(path) + ".meta.json").read_text())
            dtypes = sidecar["dtypes"]
            str_cols = {c: str for c, t in dtypes.items() if t in ("object", "str", "string")}
            table = pd.read_csv(path, dtype=str_cols, keep_default_na=False, na_values=[_CSV_NA])
            return cls(_restore(table, dtypes), sidecar["meta"])
        raise ValueError(f"Cannot read {str(path)!r}: expected a .csv, .parquet or .json file.")


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

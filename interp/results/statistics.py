"""Statistics over prompts: seeded bootstrap confidence intervals of a mean, and a paired sign-flip permutation test
of two conditions. :meth:`interp.Result.aggregate` and :meth:`interp.Result.compare` call them on a method's table.

The unit of resampling is the prompt: a group's rows are summed per prompt, and a bootstrap replicate draws prompts
with replacement (a cluster bootstrap; with one row per prompt, the ordinary bootstrap of the mean). The estimate
is the mean over the group's rows, so it equals ``table.groupby(by)[value].mean()``.

Intervals (``interval=``):

- ``"bca"`` (default): the bias-corrected and accelerated bootstrap (Efron 1987, "Better bootstrap confidence
  intervals", JASA 82:171; Efron & Tibshirani 1993, ch. 14): the percentile interval with its ends moved by the
  bias correction z0 = Phi^-1(share of replicates below the estimate, ties counted half) and the acceleration
  a = sum(d^3) / (6 sum(d^2)^1.5) from the leave-one-prompt-out (jackknife) estimates. Second-order accurate, and
  it respects the range of a bounded value (an accuracy stays in [0, 1]);
- ``"percentile"``: the alpha/2 and 1 - alpha/2 quantiles of the replicates.

A group of fewer than two prompts has no interval (NaN); a group whose replicates are all equal (e.g. every prompt
correct) has the zero-width interval at its mean.

The test (:func:`sign_flip_test`) is the paired permutation test of a zero mean difference: under the null the
per-prompt differences are symmetric about 0, so flipping the sign of any subset of them is as likely as the
observed set. Two-sided, statistic |mean difference|; exact (all 2^n sign patterns) when 2^n <= ``n_perm``,
otherwise ``n_perm`` seeded random patterns with p = (1 + #{|T*| >= |T|}) / (1 + n_perm), which never rejects more
often than its level under the null (Phipson & Smyth 2010, "Permutation p-values should never be zero").

Cost: one [groups x prompts] x [prompts x n_boot] product of resampling counts (the replicates of every group with
the same prompts at once) and a sort of the replicates; the test is one [groups x n] x [n x n_perm] product.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ParameterError, check_choice, check_positive_int

INTERVALS = ("bca", "percentile")
DEFAULT_N_BOOT = 2000
DEFAULT_N_PERM = 10_000
_NORMAL = NormalDist()


def check_ci(ci: object) -> float:
    """``ci``: the interval's confidence level, a number strictly between 0 and 1."""
    if isinstance(ci, bool) or not isinstance(ci, (int, float)) or not 0 < ci < 1:
        raise ParameterError(f"ci must be a confidence level strictly between 0 and 1 (e.g. 0.95); got {ci!r}.")
    return float(ci)


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be an integer >= 0; got {seed!r}.")
    return int(seed)


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] counts: how often each of n prompts is drawn in each bootstrap replicate (n draws with
    replacement each)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def bootstrap_ci(sums: np.ndarray, counts: np.ndarray | None = None, *, ci: float = 0.95,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0, interval: str = "bca",
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap intervals of the mean for G groups over the same n prompts, at once.

    Args:
        sums: [G, n] (or [n]) per-prompt sums of the value over the group's rows (with one row per prompt: the
            values themselves).
        counts: [G, n] rows per prompt (None: one each). The estimate is sum(sums) / sum(counts).
        ci, n_boot, seed, interval: the level, replicates, seed and kind ("bca" or "percentile").
        rng: a generator to draw from instead of a new one from ``seed`` (several calls, one seeded stream).

    Returns: (estimate, low, high), each [G] (or scalars' arrays of shape [] for a 1-d input).
    """
    ci = check_ci(ci)
    check_choice("interval", interval, INTERVALS)
    s = np.asarray(sums, dtype=float)
    one = s.ndim == 1
    s = np.atleast_2d(s)
    c = np.ones_like(s) if counts is None else np.atleast_2d(np.asarray(counts, dtype=float))
    g, n = s.shape
    est = s.sum(1) / c.sum(1)
    low, high = np.full(g, np.nan), np.full(g, np.nan)
    if n >= 2:
        gen = rng if rng is not None else np.random.default_rng(check_seed(seed))
        w = resample_counts(n, check_positive_int("n_boot", n_boot), gen)
        reps = (s @ w.T) / (c @ w.T)  # [G, B]
        reps.sort(axis=1)
        b = reps.shape[1]
        alpha = (1 - ci) / 2
        if interval == "percentile":
            a_lo, a_hi = np.full(g, alpha), np.full(g, 1 - alpha)
        else:
            below = (reps < est[:, None]).sum(1) + 0.5 * (reps == est[:, None]).sum(1)
            p0 = np.clip(below / b, 0.5 / b, 1 - 0.5 / b)
            z0 = np.array([_NORMAL.inv_cdf(p) for p in p0])
            jack = (s.sum(1, keepdims=True) - s) / (c.sum(1, keepdims=True) - c)  # leave one prompt out
            d = jack.mean(1, keepdims=True) - jack
            den = 6 * (d ** 2).sum(1) ** 1.5
            acc = np.divide((d ** 3).sum(1), den, out=np.zeros(g), where=den > 0)
            a_lo, a_hi = (_bca_level(z0, acc, _NORMAL.inv_cdf(q)) for q in (alpha, 1 - alpha))
        low, high = _row_quantile(reps, a_lo), _row_quantile(reps, a_hi)
        flat = reps[:, 0] == reps[:, -1]  # no spread: the zero-width interval at the estimate
        low[flat], high[flat] = est[flat], est[flat]
    if one:
        return est[0], low[0], high[0]
    return est, low, high


def _bca_level(z0: np.ndarray, acc: np.ndarray, z: float) -> np.ndarray:
    t = z0 + z
    return np.array([_NORMAL.cdf(v) for v in z0 + t / (1 - acc * t)])


def _row_quantile(sorted_rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantile q[i] of row i of an ascending [G, B] array (linear interpolation, numpy's default rule)."""
    b = sorted_rows.shape[1]
    pos = np.clip(q, 0, 1) * (b - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, b - 1)
    frac = pos - lo
    rows = np.arange(sorted_rows.shape[0])
    return sorted_rows[rows, lo] * (1 - frac) + sorted_rows[rows, hi] * frac


def sign_flip_test(differences: np.ndarray, *, n_perm: int = DEFAULT_N_PERM, seed: int = 0,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Two-sided paired permutation (sign-flip) p-values of a zero mean difference, for G rows of n per-prompt
    differences at once ([G, n] or [n]); exact when 2^n <= n_perm. NaN for a row of fewer than one difference."""
    n_perm = check_positive_int("n_perm", n_perm)
    d = np.asarray(differences, dtype=float)
    one = d.ndim == 1
    d = np.atleast_2d(d)
    g, n = d.shape
    if n == 0:
        return np.full(g, np.nan) if not one else np.float64(np.nan)
    observed = np.abs(d.mean(1))
    tol = 1e-12 * np.maximum(1.0, np.abs(d).max(1))  # equal statistics must count as reached despite round-off
    if n <= 30 and 2 ** n <= n_perm:
        codes = np.arange(2 ** n)[:, None] >> np.arange(n)[None, :] & 1
        signs = 1.0 - 2.0 * codes  # every pattern once, the identity included
        stats = np.abs(d @ signs.T) / n
        p = (stats >= observed[:, None] - tol[:, None]).mean(1)
    else:
        gen = rng if rng is not None else np.random.default_rng(check_seed(seed))
        signs = gen.choice(np.array([-1.0, 1.0]), size=(n_perm, n))
        stats = np.abs(d @ signs.T) / n
        p = (1 + (stats >= observed[:, None] - tol[:, None]).sum(1)) / (1 + n_perm)
    return p[0] if one else p




# --- tables -----------------------------------------------------------------------------------------------------
def _numeric(table: pd.DataFrame, col: str, where: str) -> np.ndarray:
    if col not in table.columns:
        raise ParameterError(f"{where}: no column {col!r}; columns are {list(table.columns)}.")
    s = table[col]
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float).to_numpy()
    if not pd.api.types.is_numeric_dtype(s):
        raise ParameterError(f"{where}: column {col!r} ({s.dtype}) is not numeric; a mean needs numbers or booleans.")
    return s.astype(float).to_numpy()


def _columns(names: Any, what: str) -> list[str]:
    if isinstance(names, str):
        return [names]
    try:
        out = list(names)
    except TypeError:
        raise ParameterError(f"{what} must be a column name or a list of them; got {names!r}.") from None
    if not all(isinstance(n, str) for n in out):
        raise ParameterError(f"{what} must be a column name or a list of them; got {names!r}.")
    if len(set(out)) != len(out):
        raise ParameterError(f"{what} names a column twice: {out}.")
    return out


def _group_codes(table: pd.DataFrame, by: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Group index of every row (groups in order of first appearance, missing keys kept) and the groups' keys."""
    if not by:
        return np.zeros(len(table), dtype=int), pd.DataFrame(index=[0])
    codes = table.groupby(by, sort=False, dropna=False).ngroup().to_numpy()
    first = pd.Series(np.arange(len(table))).groupby(codes).min().sort_index().to_numpy()
    keys = table.iloc[first][by].reset_index(drop=True)
    return codes, keys


def aggregate_table(table: pd.DataFrame, by: Sequence[str], values: Mapping[str, str], *, unit: str = "prompt_id",
                    ci: float = 0.95, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                    interval: str = "bca") -> pd.DataFrame:
    """One row per group of ``by``: ``n_prompts`` and, for each ``{name: column}`` of ``values``, ``name`` (the mean
    of ``column`` over the group's rows, NaN skipped), ``name_ci_low`` and ``name_ci_high`` (the bootstrap interval,
    prompts of ``unit`` resampled). Groups in order of first appearance."""
    where = "aggregate"
    ci = check_ci(ci)
    check_choice("interval", interval, INTERVALS)
    n_boot = check_positive_int("n_boot", n_boot)
    rng = np.random.default_rng(check_seed(seed))
    by = list(by)
    for c in [*by, unit]:
        if c not in table.columns:
            raise ParameterError(f"{where}: no column {c!r} to group by; columns are {list(table.columns)}.")
    if unit in by:
        raise ParameterError(f"{where}: by={by} includes {unit!r}, the unit resampled; leave it out.")
    codes, keys = _group_codes(table, by)
    units, ucodes = np.unique(pd.factorize(table[unit])[0], return_inverse=True)
    n_groups, n_units = len(keys), len(units)
    out = keys.copy()
    present = np.zeros((n_groups, n_units), dtype=bool)
    present[codes, ucodes] = True
    out["n_prompts"] = present.sum(1)
    for name, col in values.items():
        x = _numeric(table, col, where)
        ok = ~np.isnan(x)
        sums, counts = np.zeros((n_groups, n_units)), np.zeros((n_groups, n_units))
        np.add.at(sums, (codes[ok], ucodes[ok]), x[ok])
        np.add.at(counts, (codes[ok], ucodes[ok]), 1.0)
        est, low, high = np.full(n_groups, np.nan), np.full(n_groups, np.nan), np.full(n_groups, np.nan)
        mask = counts > 0
        patterns: dict[bytes, list[int]] = {}
        for gi in range(n_groups):
            patterns.setdefault(mask[gi].tobytes(), []).append(gi)
        for rows in patterns.values():  # groups over the same prompts share their replicates' draws
            cols = np.flatnonzero(mask[rows[0]])
            if not len(cols):
                continue
            e, lo, hi = bootstrap_ci(sums[np.ix_(rows, cols)], counts[np.ix_(rows, cols)], ci=ci, n_boot=n_boot,
                                     interval=interval, rng=rng)
            est[rows], low[rows], high[rows] = e, lo, hi
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = est, low, high
    return out


def compare_table(table: pd.DataFrame, column: str, baseline: Any, treatments: Sequence[Any] | None, *,
                  value: str, by: Sequence[str] = (), unit: str = "prompt_id", ci: float = 0.95,
                  n_boot: int = DEFAULT_N_BOOT, n_perm: int = DEFAULT_N_PERM, seed: int = 0,
                  interval: str = "bca") -> pd.DataFrame:
    """Paired comparison of the rows whose ``column`` is each treatment value with those whose ``column`` is
    ``baseline``, per group of ``by``: a prompt's value under a condition is its mean over that condition's rows
    (e.g. over random control sets); prompts with both are paired. One row per group x treatment: treatment,
    baseline, n_pairs, treatment_mean, baseline_mean, difference (mean of treatment - baseline over the pairs),
    difference_ci_low / difference_ci_high (bootstrap over the pairs) and p_value (two-sided sign-flip test)."""
    where = "compare"
    ci = check_ci(ci)
    check_choice("interval", interval, INTERVALS)
    n_boot, n_perm = check_positive_int("n_boot", n_boot), check_positive_int("n_perm", n_perm)
    rng = np.random.default_rng(check_seed(seed))
    by = list(by)
    for c in [column, *by, unit]:
        if c not in table.columns:
            raise ParameterError(f"{where}: no column {c!r}; columns are {list(table.columns)}.")
    if column in by or unit in by or column == unit:
        raise ParameterError(f"{where}: column={column!r}, by={by} and the unit {unit!r} must be distinct columns.")
    x = _numeric(table, value, where)
    level_codes, uniques = pd.factorize(table[column], use_na_sentinel=False)
    levels = list(uniques)
    if baseline not in levels:
        raise ParameterError(f"{where}: column {column!r} has no value {baseline!r} (values: "
                             f"{', '.join(map(repr, levels[:12]))}).")
    if treatments is None:
        treatments = [v for v in levels if v != baseline]
    for t in treatments:
        if t not in levels:
            raise ParameterError(f"{where}: column {column!r} has no value {t!r} (values: "
                                 f"{', '.join(map(repr, levels[:12]))}).")
        if t == baseline:
            raise ParameterError(f"{where}: treatment {t!r} is the baseline itself.")
    codes, keys = _group_codes(table, by)
    ok = ~np.isnan(x)
    frame = pd.DataFrame({"_g": codes[ok], "_c": level_codes[ok],
                          "_u": pd.factorize(table[unit])[0][ok], "_x": x[ok]})
    level_code = {v: i for i, v in enumerate(levels)}
    means = frame.groupby(["_g", "_c", "_u"], sort=False)["_x"].mean()
    rows = []
    for gi in range(len(keys)):
        key = tuple(keys.iloc[gi]) if by else ()
        part = means[means.index.get_level_values("_g") == gi].droplevel("_g")
        lev = part.index.get_level_values("_c")
        base = part[lev == level_code[baseline]].droplevel("_c")
        for t in treatments:
            treat = part[lev == level_code[t]].droplevel("_c")
            common = base.index.intersection(treat.index, sort=False)
            d = (treat.loc[common] - base.loc[common]).to_numpy()
            rec = dict(zip(by, key))
            rec.update({"treatment": t, "baseline": baseline, "n_pairs": len(common),
                        "treatment_mean": float(treat.loc[common].mean()) if len(common) else np.nan,
                        "baseline_mean": float(base.loc[common].mean()) if len(common) else np.nan})
            if len(common):
                est, lo, hi = bootstrap_ci(d, ci=ci, n_boot=n_boot, interval=interval, rng=rng)
                p = float(sign_flip_test(d, n_perm=n_perm, rng=rng))
            else:
                est = lo = hi = p = np.nan
            rec.update({"difference": float(est), "difference_ci_low": float(lo), "difference_ci_high": float(hi),
                        "p_value": p})
            rows.append(rec)
    out = pd.DataFrame(rows)
    for c in ("treatment", "baseline"):  # the compared column's own kind (an int layer stays an int)
        try:
            out[c] = out[c].astype(table[column].dtype)
        except (TypeError, ValueError):
            pass
    return out


# --- Result views -----------------------------------------------------------------------------------------------
def _check_per_prompt(result: Any, unit: str, what: str) -> pd.DataFrame:
    table = result.table
    if unit not in table.columns:
        raise ParameterError(f"{what}: {result.method or 'this result'}'s table has no {unit!r} column: intervals "
                             "over prompts need a table with one row per prompt (x its other keys).")
    return table


def _aggregate_schema(result: Any, by: list[str], names: list[str], table: pd.DataFrame) -> dict[str, Any]:
    from .schema import Schema

    src = result.schema
    kinds = {c: ("bool" if pd.api.types.is_bool_dtype(t) else "int" if pd.api.types.is_integer_dtype(t)
                 else "float" if pd.api.types.is_float_dtype(t) else "str") for c, t in table.dtypes.items()}
    value = names[0]
    unit = src.unit if src is not None and value == src.value else (src.units.get(value, "") if src else "")
    sign = src.sign if src is not None and value == src.value else "higher"
    grid = (by[0], by[1] if len(by) > 1 else None) if by else ("n_prompts", None)
    return Schema(keys=tuple(by), value=value, unit=f"mean {unit}".strip(), sign=sign, columns=kinds,
                  grid=grid).to_dict()


def aggregate(result: Any, by: str | Sequence[str] | None = None, *, value: str | Sequence[str] | None = None,
              ci: float = 0.95, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, interval: str = "bca") -> Any:
    """See :meth:`interp.Result.aggregate`."""
    from .result import Result

    table = _check_per_prompt(result, "prompt_id", "aggregate")
    schema = result.schema
    if by is None:
        if schema is None:
            raise ParameterError("aggregate: this result declares no schema; name the columns to group by (by=...).")
        by = [k for k in schema.keys if k != "prompt_id" and k in table.columns]
    by = _columns(by, "by")
    if value is None:
        if schema is None:
            raise ParameterError("aggregate: this result declares no schema; name the value column(s) (value=...).")
        value = schema.value
    names = _columns(value, "value")
    out = aggregate_table(table, by, {v: v for v in names}, ci=ci, n_boot=n_boot, seed=seed, interval=interval)
    meta = {k: v for k, v in result.meta.items() if k != "schema"}
    meta.update({"method": f"{result.method}_aggregate" if result.method else "aggregate",
                 "aggregate": {"of": result.method, "by": by, "value": names, "ci": ci, "n_boot": n_boot, "seed": seed,
                               "interval": interval, "unit": "prompt_id"}})
    meta["schema"] = _aggregate_schema(result, by, names, out)
    return Result(out, meta)


def compare(result: Any, column: str, baseline: Any, *, treatment: Any = None, value: str | None = None,
            by: str | Sequence[str] | None = None, ci: float = 0.95, n_boot: int = DEFAULT_N_BOOT,
            n_perm: int = DEFAULT_N_PERM, seed: int = 0, interval: str = "bca") -> Any:
    """See :meth:`interp.Result.compare`."""
    from .result import Result

    table = _check_per_prompt(result, "prompt_id", "compare")
    schema = result.schema
    if value is None:
        if schema is None:
            raise ParameterError("compare: this result declares no schema; name the value column (value=...).")
        value = schema.value
    if not isinstance(value, str):
        raise ParameterError(f"compare: value must be one column name; got {value!r}.")
    by = [] if by is None else _columns(by, "by")
    treatments = None if treatment is None else (list(treatment) if isinstance(treatment, (list, tuple))
                                                 else [treatment])
    out = compare_table(table, column, baseline, treatments, value=value, by=by, ci=ci, n_boot=n_boot,
                        n_perm=n_perm, seed=seed, interval=interval)
    meta = {k: v for k, v in result.meta.items() if k != "schema"}
    meta.update({"method": f"{result.method}_compare" if result.method else "compare",
                 "compare": {"of": result.method, "column": column, "baseline": baseline, "value": value, "by": by,
                             "ci": ci, "n_boot": n_boot, "n_perm": n_perm, "seed": seed, "interval": interval,
                             "test": "two-sided paired sign-flip permutation test of a zero mean difference",
                             "unit": "prompt_id"}})
    from .result import _jsonable

    meta = _jsonable(meta)
    from .schema import Schema

    kinds = {c: ("bool" if pd.api.types.is_bool_dtype(t) else "int" if pd.api.types.is_integer_dtype(t)
                 else "float" if pd.api.types.is_float_dtype(t) else "str") for c, t in out.dtypes.items()}
    meta["schema"] = Schema(keys=(*by, "treatment"), value="difference", unit=f"{value} difference", sign="magnitude",
                            columns=kinds, grid=("treatment", by[0] if by else None)).to_dict()
    return Result(out, meta)


def with_intervals(summary: pd.DataFrame, rows: pd.DataFrame, keys: Sequence[str], columns: Mapping[str, str], *,
                   ci: float = 0.95, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   interval: str = "bca") -> pd.DataFrame:
    """A method's own summary table (one row per ``keys``, holding means of ``rows``' columns under other names,
    e.g. a lens's ``accuracy`` = mean of ``correct``) with ``<name>_ci_low`` / ``<name>_ci_high`` added after each
    ``name`` of ``columns`` ({summary name: rows column}), from :func:`aggregate_table` over the same rows."""
    present = {k: v for k, v in columns.items() if k in summary.columns and v in rows.columns}
    agg = aggregate_table(rows, keys, present, ci=ci, n_boot=n_boot, seed=seed, interval=interval)
    agg = agg.drop(columns=["n_prompts", *present])
    out = summary.merge(agg, on=list(keys), how="left", sort=False)
    order = []
    for c in summary.columns:
        order.append(c)
        if c in present:
            order += [f"{c}_ci_low", f"{c}_ci_high"]
    return out[order]

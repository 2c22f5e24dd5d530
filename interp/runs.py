"""Dataset runs that resume: a method over a prompt set, written shard by shard to a directory.

``run_resumable(method, model, prompts, out_dir)`` splits the prompts into fixed shards, runs the method on each
and writes ``shard_00000.parquet`` ... as it goes (each written to a temporary name, then renamed, so a killed
run leaves only complete shards). Started again with the same arguments it skips the finished shards; the
merged table is the one an uninterrupted run gives. ``manifest.json`` records the method, its parameters, the
model and the dataset: a run with any of them changed refuses to mix into the directory.

How a method shards is its registry entry's :class:`~interp.registry.ShardPlan`: methods whose rows are per
prompt concatenate (and recompute their dataset-level summaries from the merged table); methods that compute a
statistic of the whole set (generalised Ships, head-expert correlation, routing load, ...) return per-prompt
pieces from each shard and compute the statistic once from all of them; dataset-wide inputs (causal tracing's
noise scale) are fixed once before the first shard and recorded in the manifest.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .errors import InterpError, check_positive_int
from .model import as_model
from .prompts import PromptSet, as_prompt_set
from .provenance import model_fingerprint
from .registry import ShardPlan, require_method, shard_inputs
from .results import Result, _jsonable, jsonable_parameters

MANIFEST = "manifest.json"


def _resolve(method: str | Callable[..., Result]) -> tuple[str, Callable[..., Result]]:
    if callable(method):
        entry = getattr(method, "registry_entry", None)
        return (entry.name if entry else method.__name__), method
    entry = require_method(method)
    return entry.name, entry.function


def shard_plan(fn: Callable[..., Result]) -> ShardPlan:
    entry = getattr(fn, "registry_entry", None)
    return entry.shards if entry is not None and entry.shards is not None else ShardPlan()


def prepare_params(fn: Callable[..., Result], model: Any, prompts: PromptSet, params: dict) -> dict:
    """The parameters every shard runs with: the user's, plus what the plan fixes once over the whole set."""
    plan = shard_plan(fn)
    return dict(params) if plan.prepare is None else plan.prepare(as_model(model), prompts, dict(params))


def call_method(fn: Callable[..., Result], model: Any, prompts: Any, params: dict) -> Result:
    """``fn(model, prompts, **params)``, where the keys of ``params`` that are not parameters of ``fn`` (the
    shard inputs a :class:`ShardPlan` fixed, such as causal tracing's noise scale) reach it through
    :func:`interp.registry.shard_input` instead of its signature."""
    sig = inspect.signature(getattr(fn, "__wrapped__", fn))
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return fn(model, prompts, **params)
    accepted = set(list(sig.parameters)[2:])
    kwargs = {k: v for k, v in params.items() if k in accepted}
    with shard_inputs(**{k: v for k, v in params.items() if k not in accepted}):
        return fn(model, prompts, **kwargs)


def combine_parts(fn: Callable[..., Result], parts: list[Result], dataset: dict, params: dict) -> Result:
    """The whole set's Result from the shard Results (in shard order); ``dataset`` updates the metadata. The
    merged Result has the shards' class (a LensResult stays one)."""
    meta = dict(parts[0].meta)
    meta.update(dataset)
    plan = shard_plan(fn)
    if plan.merge is not None:
        merged = plan.merge(parts, meta, params)
    else:
        merged = Result(pd.concat([p.table for p in parts], ignore_index=True), meta)
    cls = type(parts[0])
    if type(merged) is not cls and issubclass(cls, type(merged)):
        merged = cls(merged.table, merged.meta)
    return merged


def user_parameters(fn: Callable[..., Result], model: Any, prompts: Any, params: dict) -> dict | None:
    """What ``meta["parameters"]`` of one run over the whole set records for these user parameters."""
    entry = getattr(fn, "registry_entry", None)
    if entry is None:
        return None
    return jsonable_parameters(entry.bind(model, prompts, **params))


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _manifest_value(value: Any) -> Any:
    """A prompt set given as a parameter is recorded by its fingerprint."""
    if isinstance(value, PromptSet):
        return {"prompt_set": value.fingerprint(), "n_prompts": len(value)}
    return value


def shard_params(fn: Callable[..., Result], params: dict, start: int, end: int) -> dict:
    """The parameters of the shard of prompts [start, end): paired prompt sets are cut the same way."""
    paired = shard_plan(fn).paired
    return {k: (v[start:end] if k in paired else v) for k, v in params.items()}


def run_manifest(name: str, model: Any, prompts: PromptSet, params: dict, shard_size: int) -> dict:
    return {
        "method": name,
        "parameters": _jsonable({k: _manifest_value(v) for k, v in params.items()}),
        "model": as_model(model).name,
        "model_fingerprint": model_fingerprint(model),
        "dataset_fingerprint": prompts.fingerprint(),
        "n_prompts": len(prompts),
        "shard_size": shard_size,
    }


def check_manifest(out: Path, manifest: dict) -> None:
    """Write the manifest, or refuse when the directory holds a run with other arguments."""
    path = out / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in manifest if old.get(k) != manifest[k]]
        if diff:
            raise InterpError(
                f"{str(out)!r} holds a run with different {', '.join(diff)} "
                f"(was {', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use another directory or delete it."
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, path)


def shard_path(out: Path, k: int) -> Path:
    return out / f"shard_{k:05d}.parquet"


def write_shard(result: Result, out: Path, k: int) -> None:
    tmp = out / f".shard_{k:05d}.tmp.parquet"
    result.to_parquet(tmp)
    os.replace(tmp, shard_path(out, k))  # atomic: a killed run never leaves half a shard


def merge_shards(fn: Callable[..., Result], out: Path, manifest: dict, n_shards: int, params: dict) -> Result:
    parts = [Result.read(shard_path(out, k)) for k in range(n_shards)]
    return combine_parts(fn, parts, {"dataset_fingerprint": manifest["dataset_fingerprint"],
                                     "n_prompts": manifest["n_prompts"], "shards": n_shards,
                                     "shard_size": manifest["shard_size"]}, params)


def run_resumable(
    method: str | Callable[..., Result],
    model: Any,
    prompts: Any,
    out_dir: str | Path,
    *,
    shard_size: int = 64,
    progress: bool = True,
    **params: Any,
) -> Result:
    """Run ``method(model, shard, **params)`` shard by shard into ``out_dir``, skipping shards already done.

    Returns the merged Result (also written as ``result.parquet``). Cost: the method's own, once per prompt
    over all runs together. A method whose plan resumes by stage (Sahara, cross-task patching) runs once over the
    whole set, its stages saved under ``out_dir/stages``.
    """
    name, fn = _resolve(method)
    ps = as_prompt_set(prompts)
    check_positive_int("shard_size", shard_size)
    out = Path(out_dir)
    user_params = dict(params)
    params = prepare_params(fn, model, ps, params)
    manifest = run_manifest(name, model, ps, params, shard_size)
    check_manifest(out, manifest)
    plan = shard_plan(fn)
    if plan.checkpoint:  # a statistic of the whole set at every stage: resume by stage
        result = call_method(fn, model, ps, {**params, "checkpoint_dir": str(out / "stages")})
        result.meta.update({"resumed_by": "stage", "stages": str(out / "stages")})
        result.to_parquet(out / "result.parquet")
        return result
    ranges = shard_ranges(len(ps), shard_size)
    run_shard = plan.shard_function or fn
    todo = [k for k in range(len(ranges)) if not shard_path(out, k).exists()]
    for k in tqdm(todo, desc=f"{name} shards", disable=not progress):
        s, e = ranges[k]
        write_shard(call_method(run_shard, model, ps[s:e], shard_params(fn, params, s, e)), out, k)
    merged = merge_shards(fn, out, manifest, len(ranges), params)
    recorded = user_parameters(fn, model, ps, user_params)
    if recorded is not None:
        merged.meta["parameters"] = recorded
    merged.to_parquet(out / "result.parquet")
    return merged

"""Dataset runs that resume: a method over a prompt set, written shard by shard to a directory.

``run_resumable(method, model, prompts, out_dir)`` splits the prompts into fixed shards, runs the method on each
and writes ``shard_00000.parquet`` ... as it goes (each written to a temporary name, then renamed, so a killed
run leaves only complete shards). Started again with the same arguments it skips the finished shards; the
merged table is the one an uninterrupted run gives. ``manifest.json`` records the method, its parameters, the
model and the dataset: a run with any of them changed refuses to mix into the directory.

How a method shards is its registry entry's :class:`~interp.methods.registry.ShardPlan`: methods whose rows are per
prompt concatenate (and recompute their dataset-level summaries from the merged table); methods that compute a
statistic of the whole set (generalised Ships, head-expert correlation, routing load, ...) return per-prompt
pieces from each shard and compute the statistic once from all of them; dataset-wide inputs (causal tracing's
noise scale) are fixed once before the first shard and recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..errors import InterpError, check_positive_int
from ..methods.registry import ShardPlan, require_method, shard_inputs
from ..model.loading import as_model
from ..prompts import PromptSet, as_prompt_set
from ..results.provenance import model_fingerprint
from ..results.result import Result, _jsonable, jsonable_parameters

MANIFEST = "manifest.json"
DISPLAY_ONLY = ("progress",)  # parameters that change what is shown, not what is computed
LOCK = "run.lock"


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
    :func:`interp.methods.registry.shard_input` instead of its signature."""
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
        "parameters": _jsonable({k: _manifest_value(v) for k, v in params.items() if k not in DISPLAY_ONLY}),
        "model": as_model(model).name,
        "model_fingerprint": model_fingerprint(model),
        "dataset_fingerprint": prompts.fingerprint(),
        "n_prompts": len(prompts),
        "shard_size": shard_size,
    }


class RunDirectoryError(InterpError):
    """A run directory that cannot be resumed as asked: another run's manifest or shards, a second writer, or files
    that do not belong to this run."""


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_manifest(out: Path, manifest: dict) -> None:
    """Create the manifest (exclusively: of two runs started at once, one creates it and the other compares), or
    refuse when the directory holds a run with other arguments, or shards without a manifest."""
    from ..results.atomic import create_exclusive

    path = out / MANIFEST
    if not path.exists():
        strays = sorted(p.name for p in out.glob("shard_*.parquet")) if out.is_dir() else []
        if strays:
            raise RunDirectoryError(
                f"{str(out)!r} holds shards ({', '.join(strays[:3])}{' ...' if len(strays) > 3 else ''}) but no "
                f"{MANIFEST}: they are not adopted, since nothing says which run wrote them; use another directory.")
        if create_exclusive(path, json.dumps(manifest, indent=1)):
            return
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirectoryError(f"{str(path)!r} is not a readable manifest ({exc}); use another directory.") from exc
    diff = [k for k in manifest if old.get(k) != manifest[k]]
    if diff:
        raise RunDirectoryError(
            f"{str(out)!r} holds a run with different {', '.join(diff)} "
            f"(was {', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use another directory or delete it."
        )


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out/run.lock`` for the run: a second writer on the same directory is refused while the first one
    lives; a lock left by a killed run (its process is gone) is taken over."""
    from ..results.atomic import create_exclusive

    path = out / LOCK
    mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": os.urandom(8).hex()})
    for _ in range(2):
        if create_exclusive(path, mine):
            break
        try:
            held = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            held = {}
        if held.get("host") == socket.gethostname() and _alive(held.get("pid")):
            raise RunDirectoryError(f"Another run (pid {held.get('pid')}) is writing into {str(out)!r}; wait for it "
                                    "to finish or use another directory.")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale lock of a killed run of ours
    else:
        raise RunDirectoryError(f"Could not take the lock {str(path)!r}: another run is starting there.")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text() == mine:
                path.unlink()


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def shard_path(out: Path, k: int) -> Path:
    return out / f"shard_{k:05d}.parquet"


def shard_stamps(manifest: dict, prompts: PromptSet, ranges: list[tuple[int, int]]) -> list[dict]:
    """What each shard records about the run it belongs to: the run's hash (method, parameters, model and dataset
    fingerprints, shard size), its index and its prompts (first / last id and a hash of the ids)."""
    run = _digest(manifest)
    ids = prompts.ids
    return [{"run": run, "model_fingerprint": manifest["model_fingerprint"], "index": k, "start": s, "end": e,
             "first_id": ids[s], "last_id": ids[e - 1], "ids_sha256": _digest(ids[s:e])}
            for k, (s, e) in enumerate(ranges)]


def write_shard(result: Result, out: Path, k: int, stamp: dict | None = None) -> None:
    if stamp is not None:
        result.meta["shard"] = stamp
    result.to_parquet(shard_path(out, k))  # atomic: a killed run never leaves half a shard


def read_shard(out: Path, k: int, stamp: dict) -> Result | None:
    """Shard k if it is there and belongs to this run; None if it is missing or unreadable (then it is computed
    again, with a warning naming it). A readable shard of another run, or of other prompts, is refused."""
    import warnings

    path = shard_path(out, k)
    if not path.exists():
        return None
    try:
        part = Result.read(path)
    except Exception as exc:  # a truncated or corrupted file: recompute it
        warnings.warn(f"{str(path)!r} is unreadable ({exc}); computing that shard again.", RunWarning, stacklevel=3)
        return None
    got = part.meta.get("shard")
    if got != stamp:
        what = [k2 for k2 in stamp if not isinstance(got, dict) or got.get(k2) != stamp[k2]]
        raise RunDirectoryError(
            f"{str(path)!r} does not belong to this run (it differs in {', '.join(what) or 'its stamp'}: e.g. a shard "
            "copied from another run or another position); remove it or use another directory.")
    return part


class RunWarning(UserWarning):
    """Something in a run directory was recomputed rather than trusted (an unreadable shard)."""


def merge_shards(fn: Callable[..., Result], out: Path, manifest: dict, parts: list[Result], params: dict) -> Result:
    for part in parts:
        part.meta.pop("shard", None)
    return combine_parts(fn, parts, {"dataset_fingerprint": manifest["dataset_fingerprint"],
                                     "n_prompts": manifest["n_prompts"], "shards": len(parts),
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
    ``progress`` shows the bar over shards, and is passed on to a method that has a ``progress`` parameter of its
    own (unless ``params`` sets it).

    Returns the merged Result (also written as ``result.parquet``). Cost: the method's own, once per prompt
    over all runs together. A method whose plan resumes by stage (Sahara, cross-task patching) runs once over the
    whole set, its stages saved under ``out_dir/stages``.
    """
    name, fn = _resolve(method)
    ps = as_prompt_set(prompts)
    check_positive_int("shard_size", shard_size)
    out = Path(out_dir)
    entry = getattr(fn, "registry_entry", None)
    if entry is not None and "progress" in entry.parameters and "progress" not in params:
        params = {**params, "progress": progress}  # one switch for the run's bar and the method's own
    user_params = dict(params)
    params = prepare_params(fn, model, ps, params)
    manifest = run_manifest(name, model, ps, params, shard_size)
    check_manifest(out, manifest)
    plan = shard_plan(fn)
    with run_lock(out):
        if plan.checkpoint:  # a statistic of the whole set at every stage: resume by stage
            result = call_method(fn, model, ps, {**params, "checkpoint_dir": str(out / "stages")})
            result.meta.update({"resumed_by": "stage", "stages": str(out / "stages")})
            result.to_parquet(out / "result.parquet")
            return result
        for stale in out.glob(".shard_*.tmp"):  # a write of ours cut by a kill: never part of the state
            stale.unlink()
        ranges = shard_ranges(len(ps), shard_size)
        stamps = shard_stamps(manifest, ps, ranges)
        run_shard = plan.shard_function or fn
        parts: dict[int, Result] = {}
        for k in range(len(ranges)):
            found = read_shard(out, k, stamps[k])
            if found is not None:
                parts[k] = found
        todo = [k for k in range(len(ranges)) if k not in parts]
        for k in tqdm(todo, desc=f"{name} shards", disable=not progress):
            s, e = ranges[k]
            part = call_method(run_shard, model, ps[s:e], shard_params(fn, params, s, e))
            write_shard(part, out, k, stamps[k])
            parts[k] = Result.read(shard_path(out, k))  # merge what is on disk: a resumed run reads the same
        merged = merge_shards(fn, out, manifest, [parts[k] for k in range(len(ranges))], params)
        recorded = user_parameters(fn, model, ps, user_params)
        if recorded is not None:
            merged.meta["parameters"] = recorded
        merged.to_parquet(out / "result.parquet")
        return merged

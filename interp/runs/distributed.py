"""Sharding a prompt set over a Ray cluster (the optional extra ``interp[ray]``).

The prompt set is split into the same fixed shards as :func:`interp.runs.resumable.run_resumable`; each shard runs as a
task on a worker actor that loads the model once. Results come back as Results and merge, in shard order, into
one Result equal to the single-process run. A worker that dies mid-shard is replaced and its shard retried:
every shard is counted exactly once. With ``out_dir`` the finished shards are also written there, so an
interrupted distributed run resumes like a local one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import InterpError, ParameterError, check_positive_int
from ..prompts import as_prompt_set
from ..results.result import Result
from .resumable import (
    _resolve,
    check_manifest,
    combine_parts,
    merge_shards,
    prepare_params,
    read_shard,
    run_lock,
    run_manifest,
    shard_params,
    shard_path,
    shard_plan,
    shard_ranges,
    shard_stamps,
    write_shard,
)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise InterpError("Ray is not installed: pip install 'interp[ray]'.") from exc
    return ray


_WATCHDOG = """
import os, signal, sys, time
driver = int(sys.argv[1])

def ray_tree():
    parents, names = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    parents[int(name)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    names[int(name)] = fh.read()
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = set(), {driver}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    ours = {p for p in tree if b"ray" in names.get(p, b"") and p != os.getpid()}
    return ours | {p for p in tree if any(parents.get(p) == q for q in ours)}

known = set()
while True:
    try:
        os.kill(driver, 0)
    except ProcessLookupError:
        break
    known |= ray_tree()  # the local cluster's processes (and theirs), while they hang under the driver
    time.sleep(0.25)
for pid in known:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
"""


def _watch_driver() -> Any:
    """A small process that SIGKILLs the Ray processes this driver started (GCS, raylet, workers, agents) if the
    driver dies without shutting them down: a SIGKILL of the driver skips every exit handler, so Ray's own cleanup
    never runs. Started before the cluster (so no start-up window is left), stopped after a normal shutdown.
    Linux only (it reads /proc); elsewhere no watchdog is started."""
    import subprocess
    import sys

    if not os.path.isdir("/proc"):
        return None
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid())], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


class _ShardWorker:
    """Holds one loaded model; runs a method on shards of prompts."""

    def __init__(self, model_source: str, load_kwargs: dict[str, Any]):
        import os

        from ..model.loading import load_model

        self.model = load_model(model_source, **load_kwargs)
        self._pid = os.getpid()

    def pid(self) -> int:
        return self._pid

    def run(self, fn: Callable[..., Result], records: list[dict], params: dict[str, Any]) -> Result:
        from .resumable import call_method

        return call_method(fn, self.model, records, params)


def run_on_ray(
    method: str | Callable[..., Result],
    model_source: str | Path,
    prompts: Any,
    *,
    address: str = "local",
    workers: int = 2,
    shard_size: int = 64,
    max_retries: int = 3,
    out_dir: str | Path | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    **params: Any,
) -> Result:
    """Run a method over the prompts in shards (split and merged as :func:`interp.runs.resumable.run_resumable` does) on
    ``workers`` Ray actors (``address="local"`` starts a local cluster on this machine; otherwise the address of a
    running cluster, e.g. "ray://head:10001" or "auto").

    Cost: the method's own cost per prompt, spread over the workers, plus one model load per worker.
    """
    ray = _ray()
    name, fn = _resolve(method)
    ps = as_prompt_set(prompts)
    plan = shard_plan(fn)
    user_params = dict(params)
    if plan.checkpoint:
        raise ParameterError(f"{name} needs the whole prompt set at every stage, so it cannot be split over Ray "
                             "workers; run it in one process (interp.run_resumable resumes it stage by stage).")
    check_positive_int("workers", workers)
    check_positive_int("shard_size", shard_size)
    source = str(Path(model_source).resolve()) if Path(model_source).exists() else str(model_source)
    load_kwargs = dict(load_kwargs or {"device": "cpu"})
    ranges = shard_ranges(len(ps), shard_size)
    results: dict[int, Result] = {}
    out = Path(out_dir) if out_dir is not None else None
    manifest = None
    if out is not None or plan.prepare is not None:  # a driver-side copy of the model, released before the run
        from ..model.loading import load_model

        local = load_model(source, **load_kwargs)
        params = prepare_params(fn, local, ps, params)
        if out is not None:
            manifest = run_manifest(name, local, ps, params, shard_size)
        del local
    stamps = None
    lock = contextlib.ExitStack()
    if out is not None:
        check_manifest(out, manifest)
        lock.enter_context(run_lock(out))
        stamps = shard_stamps(manifest, ps, ranges)
        for k in range(len(ranges)):
            found = read_shard(out, k, stamps[k])
            if found is not None:
                results[k] = found

    with lock:
        started_here = False
        watchdog = None
        if not ray.is_initialized():
            if address == "local":
                watchdog = _watch_driver()
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False)
            started_here = True
        remote_worker = ray.remote(num_cpus=1, max_restarts=0)(_ShardWorker)
        retries: dict[int, int] = {}
        try:
            actors = [remote_worker.remote(source, load_kwargs) for _ in range(workers)]
            queue = [k for k in range(len(ranges)) if k not in results]
            running: dict[Any, tuple[int, int]] = {}  # object ref -> (shard, actor slot)
            bar = tqdm(total=len(queue), desc=f"{name} on ray", disable=not progress)
            free = list(range(workers))
            while queue or running:
                while queue and free:
                    slot, k = free.pop(), queue.pop(0)
                    s, e = ranges[k]
                    piece = shard_params(fn, params, s, e)
                    ref = actors[slot].run.remote(plan.shard_function or fn, ps.records[s:e], piece)
                    running[ref] = (k, slot)
                done, _ = ray.wait(list(running), num_returns=1)
                ref = done[0]
                k, slot = running.pop(ref)
                try:
                    res = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    retries[k] = retries.get(k, 0) + 1
                    if retries[k] > max_retries:
                        raise InterpError(f"Shard {k} failed {retries[k]} times on Ray workers; giving up.") from exc
                    actors[slot] = remote_worker.remote(source, load_kwargs)  # a fresh worker in the dead one's place
                    queue.insert(0, k)
                    free.append(slot)
                    continue
                results[k] = res
                if out is not None:
                    write_shard(res, out, k, stamps[k])
                    results[k] = Result.read(shard_path(out, k))
                free.append(slot)
                bar.update(1)
            bar.close()
        finally:
            if started_here:
                ray.shutdown()
            if watchdog is not None:
                watchdog.kill()
                watchdog.wait()

        if out is not None:
            merged = merge_shards(fn, out, manifest, [results[k] for k in range(len(ranges))], params)
        else:
            merged = combine_parts(fn, [results[k] for k in range(len(ranges))],
                                   {"dataset_fingerprint": ps.fingerprint(), "n_prompts": len(ps),
                                    "shards": len(ranges), "shard_size": shard_size}, params)
    merged.meta.update({"ray_workers": workers, "ray_retried_shards": sorted(retries)})
    entry = getattr(fn, "registry_entry", None)
    if entry is not None:
        from ..results.result import jsonable_parameters

        merged.meta["parameters"] = jsonable_parameters(entry.bind(None, ps, **user_params))
    return merged

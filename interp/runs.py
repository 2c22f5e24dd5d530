"""Dataset runs that resume: a per-prompt method over a prompt set, written shard by shard to a directory.

``run_resumable(method, model, prompts, out_dir)`` splits the prompts into fixed shards, runs the method on each
and writes ``shard_00000.parquet`` ... as it goes (each written to a temporary name, then renamed, so a killed
run leaves only complete shards). Started again with the same arguments it skips the finished shards; the
merged table is the one an uninterrupted run gives. ``manifest.json`` records the method, its parameters, the
model and the dataset: a run with any of them changed refuses to mix into the directory.

Methods whose rows are per prompt (ships, logit_lens, causal_trace, expert_attribution, predictions, ...)
shard exactly. Dataset-level statistics (sahara, generalized_ships, cross_task_patching, block_experts) depend
on the whole set at once and are not sharded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .errors import InterpError, check_positive_int
from .model import as_model
from .prompts import PromptSet, as_prompt_set
from .registry import require_method
from .results import Result, _jsonable

MANIFEST = "manifest.json"


def model_fingerprint(model: Any) -> str:
    """A hash of the model's config and weights (a sum and a sample of every tensor; cheap, and it changes
    with any retraining or a different checkpoint)."""
    m = as_model(model)
    h = hashlib.sha256(json.dumps(m.hf_model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in m.hf_model.named_parameters():
            flat = p.detach().reshape(-1)
            h.update(f"{name}{tuple(p.shape)}{flat.double().sum().item():.10e}".encode())
            h.update(flat[:: max(1, flat.numel() // 64)][:64].double().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _resolve(method: str | Callable[..., Result]) -> tuple[str, Callable[..., Result]]:
    if callable(method):
        entry = getattr(method, "registry_entry", None)
        return (entry.name if entry else method.__name__), method
    entry = require_method(method)
    return entry.name, entry.function


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def run_manifest(name: str, model: Any, prompts: PromptSet, params: dict, shard_size: int) -> dict:
    return {
        "method": name,
        "parameters": _jsonable(params),
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


def merge_shards(out: Path, manifest: dict, n_shards: int) -> Result:
    parts = [Result.read(shard_path(out, k)) for k in range(n_shards)]
    table = pd.concat([p.table for p in parts], ignore_index=True)
    meta = dict(parts[0].meta)
    meta.update({"dataset_fingerprint": manifest["dataset_fingerprint"], "n_prompts": manifest["n_prompts"],
                 "shards": n_shards, "shard_size": manifest["shard_size"]})
    return Result(table, meta)


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
    over all runs together.
    """
    name, fn = _resolve(method)
    ps = as_prompt_set(prompts)
    check_positive_int("shard_size", shard_size)
    out = Path(out_dir)
    manifest = run_manifest(name, model, ps, params, shard_size)
    check_manifest(out, manifest)
    ranges = shard_ranges(len(ps), shard_size)
    todo = [k for k in range(len(ranges)) if not shard_path(out, k).exists()]
    for k in tqdm(todo, desc=f"{name} shards", disable=not progress):
        s, e = ranges[k]
        write_shard(fn(model, ps[s:e], **params), out, k)
    merged = merge_shards(out, manifest, len(ranges))
    merged.to_parquet(out / "result.parquet")
    return merged

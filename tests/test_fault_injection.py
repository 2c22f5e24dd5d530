"""Fault injection: runs, exports and the CLI killed, starved of disk, doubled or fed foreign files. Each ends equal
to the uninterrupted run or with a clear refusal, and what is on disk always reads back as one consistent state.

- seeded SIGKILLs at random points of ``run_resumable`` and of ``interp run`` (a real child process each);
- a disk that fills mid-write (a writer that raises ENOSPC part-way through the bytes);
- two writers on one run directory;
- a truncated shard, a foreign shard, a shard copied over another, shards without a manifest.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import interp
from interp.errors import InterpError
from interp.runs.resumable import RunDirectoryError, RunWarning, run_resumable

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [{"id": f"q{i}", "prompt": f"The capital of country number {i} is", "target": " Paris"} for i in range(16)]
SEED = 20261202

CHILD = """
import json, sys, time
import interp
from interp.methods.predictions import predictions

entry = interp.get_method("predictions")

@interp.register_method("slow_predictions", paper="-", cost="1 forward per prompt, then a pause",
                        schema=entry.schema, figure=entry.figure, replace=True)
def slow_predictions(model, prompts, *, top_k: int = 3):
    time.sleep(0.15)  # a pause per shard, so a kill can land between and inside shard writes
    return predictions(model, prompts, top_k=top_k)

model = interp.load_model(sys.argv[1])
prompts = json.loads(open(sys.argv[2]).read())
interp.run_resumable("slow_predictions", model, prompts, sys.argv[3], shard_size=2, progress=False, top_k=3)
"""


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return interp.load_model(tiny_model_dirs["llama"])


@pytest.fixture(scope="module")
def slow_predictions():
    from interp.methods.predictions import predictions

    entry = interp.get_method("predictions")

    @interp.register_method("slow_predictions", paper="-", cost="1 forward per prompt, then a pause",
                            schema=entry.schema, figure=entry.figure, replace=True)
    def slow(model, prompts, *, top_k: int = 3):
        return predictions(model, prompts, top_k=top_k)

    yield slow
    interp.methods.registry._REGISTRY.pop("slow_predictions", None)


@pytest.fixture(scope="module")
def uninterrupted(llama, slow_predictions, tmp_path_factory):
    """The table of an uninterrupted sharded run (what every interrupted and resumed run must equal)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    return run_resumable(slow_predictions, llama, PROMPTS, out, shard_size=2, progress=False, top_k=3).table


def start_child(tmp_path, tiny_model_dirs, out: Path) -> subprocess.Popen:
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    (tmp_path / "child.py").write_text(CHILD)
    return subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(tiny_model_dirs["llama"]),
                             str(tmp_path / "prompts.json"), str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        time.sleep(0.02)


def every_file_reads(out: Path) -> None:
    """The consistent state: every shard and result file in the directory reads back whole."""
    for path in out.glob("*.parquet"):
        interp.Result.read(path)
    if (out / "manifest.json").exists():
        json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("trial", range(4))
def test_sigkill_at_a_random_point_of_a_run_then_resume(trial, llama, tiny_model_dirs, tmp_path, slow_predictions,
                                                        uninterrupted):
    rng = random.Random(SEED + trial)
    out = tmp_path / "run"
    proc = start_child(tmp_path, tiny_model_dirs, out)
    wait_for(lambda: (out / "manifest.json").exists())
    time.sleep(rng.uniform(0.0, 1.2))  # somewhere among the 8 shards (0.15 s each, plus writes)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    every_file_reads(out)
    resumed = run_resumable(slow_predictions, llama, PROMPTS, out, shard_size=2, progress=False, top_k=3)
    pd.testing.assert_frame_equal(resumed.table, uninterrupted, check_exact=True)
    assert not (out / "run.lock").exists()
    every_file_reads(out)


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_of_the_cli_leaves_nothing_or_whole_files(trial, tiny_model_dirs, tmp_path):
    rng = random.Random(SEED + 100 + trial)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "interp.cli", "run", "predictions", "--model", str(tiny_model_dirs["llama"]),
           "--prompts", str(tmp_path / "p.jsonl"), "--out", str(out)]
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: out.exists() or proc.poll() is not None, timeout=60)
    time.sleep(rng.uniform(0.0, 0.4))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert time.time() - started < 120
    for ext in (".csv", ".parquet", ".json"):
        path = out / f"predictions{ext}"
        if path.exists():
            if ext == ".csv" and not Path(str(path) + ".meta.json").exists():
                continue  # the CSV is renamed into place before its sidecar: refused when read (below)
            back = interp.Result.read(path)
            assert len(back.table) == len(PROMPTS) * 5  # top_k=5 rows per prompt
    csv = out / "predictions.csv"
    if csv.exists() and not Path(str(csv) + ".meta.json").exists():
        with pytest.raises(InterpError, match="no metadata sidecar"):
            interp.Result.read(csv)


class DiskFull:
    """Writes that fail with ENOSPC after ``budget`` bytes, as a full disk does (the bytes before it are written)."""

    def __init__(self, budget: int):
        self.budget = budget

    def write_bytes(self, path: Path, data: bytes) -> int:
        with open(path, "wb") as fh:
            fh.write(data[: self.budget])
        if len(data) > self.budget:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return len(data)


@pytest.mark.parametrize("budget", [0, 100, 4096])
def test_a_disk_that_fills_mid_write_keeps_the_previous_files(budget, tmp_path, monkeypatch):
    old = interp.Result(pd.DataFrame({"prompt_id": ["a", "b"], "score": [1.0, 2.0]}), {"method": "x"})
    paths = old.save(tmp_path, "r")
    before = {k: p.read_bytes() for k, p in paths.items()}
    new = interp.Result(pd.DataFrame({"prompt_id": [f"p{i}" for i in range(500)], "score": [0.5] * 500}),
                        {"method": "x"})
    full = DiskFull(budget)
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: full.write_bytes(self, data))
    import pyarrow.parquet as pq

    real_write_table = pq.write_table

    def write_table(table, where, **kw):
        real_write_table(table, where, **kw)
        data = Path(where).read_bytes()
        full.write_bytes(Path(where), data)

    monkeypatch.setattr(pq, "write_table", write_table)
    for ext in ("csv", "parquet", "json"):
        with pytest.raises(OSError, match="No space left"):
            getattr(new, f"to_{ext}")(tmp_path / f"r.{ext}")
    monkeypatch.undo()
    assert {k: p.read_bytes() for k, p in paths.items()} == before  # the previous state, whole
    for p in paths.values():
        pd.testing.assert_frame_equal(interp.Result.read(p).table, old.table)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_two_writers_on_one_run_directory(llama, tiny_model_dirs, tmp_path, slow_predictions, uninterrupted):
    out = tmp_path / "run"
    proc = start_child(tmp_path, tiny_model_dirs, out)
    try:
        wait_for(lambda: (out / "run.lock").exists())
        with pytest.raises(RunDirectoryError, match=r"Another run \(pid \d+\) is writing into"):
            run_resumable(slow_predictions, llama, PROMPTS, out, shard_size=2, progress=False, top_k=3)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    done = run_resumable(slow_predictions, llama, PROMPTS, out, shard_size=2, progress=False, top_k=3)
    pd.testing.assert_frame_equal(done.table, uninterrupted, check_exact=True)


def test_a_stale_lock_of_a_killed_run_is_taken_over(llama, tmp_path):
    out = tmp_path / "run"
    run_resumable("predictions", llama, PROMPTS[:4], out, shard_size=2, progress=False)
    (out / "run.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename, "token": "x"}))
    run_resumable("predictions", llama, PROMPTS[:4], out, shard_size=2, progress=False)
    assert not (out / "run.lock").exists()


def test_a_truncated_shard_is_named_and_recomputed(llama, tmp_path):
    out = tmp_path / "run"
    whole = run_resumable("predictions", llama, PROMPTS[:8], out, shard_size=2, progress=False)
    shard = out / "shard_00001.parquet"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.warns(RunWarning, match="shard_00001.parquet.*unreadable"):
        again = run_resumable("predictions", llama, PROMPTS[:8], out, shard_size=2, progress=False)
    pd.testing.assert_frame_equal(again.table, whole.table, check_exact=True)
    interp.Result.read(shard)


def test_a_foreign_shard_is_refused(llama, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_resumable("predictions", llama, PROMPTS[:8], a, shard_size=2, progress=False, top_k=2)
    run_resumable("predictions", llama, PROMPTS[:8], b, shard_size=2, progress=False, top_k=3)
    (a / "shard_00002.parquet").write_bytes((b / "shard_00002.parquet").read_bytes())
    with pytest.raises(RunDirectoryError, match="shard_00002.parquet.*does not belong to this run.*run"):
        run_resumable("predictions", llama, PROMPTS[:8], a, shard_size=2, progress=False, top_k=2)


def test_a_shard_copied_over_another_is_refused(llama, tmp_path):
    out = tmp_path / "run"
    run_resumable("predictions", llama, PROMPTS[:8], out, shard_size=2, progress=False)
    (out / "shard_00003.parquet").write_bytes((out / "shard_00000.parquet").read_bytes())
    with pytest.raises(RunDirectoryError, match="shard_00003.parquet.*does not belong.*index"):
        run_resumable("predictions", llama, PROMPTS[:8], out, shard_size=2, progress=False)


def test_shards_without_a_manifest_are_never_adopted(llama, tmp_path):
    out = tmp_path / "run"
    run_resumable("predictions", llama, PROMPTS[:8], out, shard_size=2, progress=False, top_k=2)
    (out / "manifest.json").unlink()
    with pytest.raises(RunDirectoryError, match="holds shards .* but no manifest.json"):
        run_resumable("predictions", llama, PROMPTS[:8], out, shard_size=2, progress=False, top_k=3)


CAPTURE_CHILD = """
import json, sys, time
import interp

capture_module = sys.modules["interp.activations.capture"]  # the module (interp.capture is also the function's name)
real = capture_module.save_file
def slow_save(*args, **kwargs):  # a pause per shard, so a kill can land between and inside shard writes
    real(*args, **kwargs)
    time.sleep(0.1)
capture_module.save_file = slow_save

model = interp.load_model(sys.argv[1])
prompts = json.loads(open(sys.argv[2]).read())
interp.capture(model, prompts, "blocks.1.hook_resid_post", positions="all", batch_size=1, to_dir=sys.argv[3],
               progress=False)
"""


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_of_a_capture_over_an_earlier_one(trial, llama, tiny_model_dirs, tmp_path):
    """The earlier capture stays readable, whole and paired with its own ids until the new one is complete."""
    rng = random.Random(SEED + 200 + trial)
    hook = "blocks.1.hook_resid_post"
    out = tmp_path / "cap"
    old_prompts = [{"id": f"old{i}", "prompt": f"An earlier prompt, number {i}"} for i in range(3)]
    old = interp.capture(llama, old_prompts, hook, positions="all", to_dir=out, progress=False)
    old_values = old[hook].clone()
    new_prompts = [{"id": f"new{i}", "prompt": p["prompt"]} for i, p in enumerate(PROMPTS)]
    (tmp_path / "prompts.json").write_text(json.dumps(new_prompts))
    (tmp_path / "child.py").write_text(CAPTURE_CHILD)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(tiny_model_dirs["llama"]),
                             str(tmp_path / "prompts.json"), str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: len(list(out.glob("shard_*.safetensors"))) > 1 or proc.poll() is not None, timeout=120)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode in (0, -signal.SIGKILL), "the capture ran (and was killed, or finished)"
    back = interp.Capture.open(out)
    if back.prompt_ids[0].startswith("old"):
        assert back.prompt_ids == [p["id"] for p in old_prompts]
        assert torch.equal(torch.nan_to_num(back[hook], nan=7.0), torch.nan_to_num(old_values, nan=7.0))
    else:  # the new capture finished before the kill: it is whole
        whole = interp.capture(llama, new_prompts, hook, positions="all", progress=False)
        assert back.prompt_ids == whole.prompt_ids
        assert torch.equal(torch.nan_to_num(back[hook], nan=7.0), torch.nan_to_num(whole[hook], nan=7.0))
    again = interp.capture(llama, new_prompts, hook, positions="all", to_dir=out, progress=False)
    assert again.prompt_ids == [p["id"] for p in new_prompts]
    assert sorted(p.name for p in out.glob("shard_*")) == sorted(s["file"] for s in
                                                                   json.loads((out / "index.json").read_text())
                                                                   ["shards"])

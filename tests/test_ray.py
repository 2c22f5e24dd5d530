"""Sharding over a local Ray cluster with 2 workers: the merged table equals the single-process run; a worker
killed mid-shard (a real SIGKILL of its process) is replaced, its shard retried, nothing lost or counted twice."""

import os
import signal
from pathlib import Path

import pandas as pd
import pytest

import interp
from interp.methods.predictions import predictions
from interp.runs.distributed import run_on_ray
from interp.runs.resumable import run_resumable

ray = pytest.importorskip("ray", reason="the ray extra is installed by `make test`; without it nothing to test")

PROMPTS = [{"id": f"r{i}", "prompt": f"The capital of France is {i}", "target": " Paris"} for i in range(20)]


def predictions_killing_once(model, prompts, *, top_k=3, marker=""):
    """predictions, except that the first worker to reach prompt r9 kills its own process (SIGKILL)."""
    if marker and any(r["id"] == "r9" for r in interp.PromptSet(prompts)) and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return predictions(model, prompts, top_k=top_k)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_two_workers_equal_one_process_even_when_a_worker_dies(local_ray, tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    single = run_resumable("predictions", interp.load_model(model_dir), PROMPTS, tmp_path / "single", shard_size=4,
                           progress=False, top_k=3)
    distributed = run_on_ray("predictions", model_dir, PROMPTS, workers=2, shard_size=4, progress=False, top_k=3)
    pd.testing.assert_frame_equal(distributed.table, single.table, check_exact=True)

    marker = tmp_path / "killed.pid"
    survived = run_on_ray(predictions_killing_once, model_dir, PROMPTS, workers=2, shard_size=4, progress=False,
                          top_k=3, marker=str(marker), out_dir=tmp_path / "ray_out")
    assert marker.exists(), "a worker was killed"
    assert survived.meta["ray_retried_shards"] == [2]
    pd.testing.assert_frame_equal(survived.table, single.table, check_exact=True)
    assert survived.table["prompt_id"].value_counts().eq(3).all()  # every prompt once (top_k rows each)


def test_a_whole_set_statistic_merges_on_ray_as_in_one_process(local_ray, tiny_model_dirs, tmp_path):
    """generalized_ships on Ray: the workers return per-prompt final states, the driver computes the SVDs once
    (the method's ShardPlan), so the score equals the one-process sharded run's exactly."""
    model_dir = tiny_model_dirs["llama"]
    kw = {"heads": [(0, 1), (1, 0)], "r_main": 2}
    single = run_resumable("generalized_ships", interp.load_model(model_dir), PROMPTS, tmp_path / "single",
                           shard_size=4, progress=False, **kw)
    distributed = run_on_ray("generalized_ships", model_dir, PROMPTS, workers=2, shard_size=4, progress=False, **kw)
    pd.testing.assert_frame_equal(distributed.table, single.table, check_exact=True)
    assert distributed.meta["score"] == single.meta["score"]


DRIVER = """
import sys, time
import interp
from interp.runs.distributed import run_on_ray
from interp.methods.predictions import predictions

def slow_predictions(model, prompts, *, top_k=3):
    time.sleep(2.0)
    return predictions(model, prompts, top_k=top_k)

prompts = [{"id": f"r{i}", "prompt": f"The capital of France is {i}", "target": " Paris"} for i in range(40)]
run_on_ray(slow_predictions, sys.argv[1], prompts, workers=2, shard_size=2, progress=False)
"""


def _descendants(pid: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (only its parent, init here, has not reaped it yet)


def test_a_killed_driver_leaves_no_ray_process_behind(tiny_model_dirs, tmp_path):
    import subprocess
    import sys
    import time

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model_dirs["llama"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, seen = time.time() + 120, set()
    while time.time() < deadline:
        seen |= _descendants(proc.pid)
        names = {Path(f"/proc/{p}/cmdline").read_bytes() for p in seen if _alive(p)}
        if any(b"raylet" in n for n in names) and sum(b"ShardWorker" in n or b"default_worker" in n
                                                      for n in names) >= 2:
            break
        time.sleep(0.2)
    assert any(_alive(p) for p in seen), "the driver started a local cluster"
    time.sleep(1.0)
    seen |= _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(p) for p in seen):
        time.sleep(0.5)
    left = [p for p in seen if _alive(p)]
    assert not left, f"Ray processes left after the driver was killed: {left}"

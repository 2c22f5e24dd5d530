"""Sharding over a local Ray cluster with 2 workers: the merged table equals the single-process run; a worker
killed mid-shard (a real SIGKILL of its process) is replaced, its shard retried, nothing lost or counted twice."""

import os
import signal
from pathlib import Path

import pandas as pd
import pytest

import interp
from interp.distributed import run_on_ray
from interp.methods.predictions import predictions
from interp.runs import run_resumable

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

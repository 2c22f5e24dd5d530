"""Resumable dataset runs: a run killed part-way (a real SIGKILL) and resumed gives the table of an
uninterrupted run; changed arguments or model refuse to mix. Also load_model's device-map plumbing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import interp
from interp.errors import DeviceError, InterpError
from interp.runs.resumable import run_resumable

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [{"id": f"q{i}", "prompt": " ".join(["the capital of", "France", "is"][: 1 + i % 3]) + f" {i}",
            "target": " Paris"} for i in range(24)]

CHILD = """
import sys, time, json
import interp
from interp.methods.predictions import predictions
from interp.runs.resumable import run_resumable

@interp.register_method("slow_predictions", paper="-", cost="1 forward per prompt, then a pause",
                        schema=interp.get_method("predictions").schema)
def slow_predictions(model, prompts, *, top_k=3):
    time.sleep(0.4)  # a pause per shard, so the parent can kill the run part-way
    return predictions(model, prompts, top_k=top_k)

model = interp.load_model(sys.argv[1])
prompts = json.loads(open(sys.argv[2]).read())
run_resumable("slow_predictions", model, prompts, sys.argv[3], shard_size=4, progress=False, top_k=3)
"""


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return interp.load_model(tiny_model_dirs["llama"])


def test_killed_run_resumes_to_the_uninterrupted_table(llama, tiny_model_dirs, tmp_path):
    from interp.methods.predictions import predictions

    @interp.register_method("slow_predictions", paper="-", cost="1 forward per prompt, then a pause", replace=True,
                            schema=interp.get_method("predictions").schema)
    def slow_predictions(model, prompts, *, top_k=3):
        return predictions(model, prompts, top_k=top_k)

    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(PROMPTS))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model_dirs["llama"]), str(prompts_file), str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard_*.parquet"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(out.glob("shard_*.parquet"))
    assert 2 <= len(done) < 6, "the run was killed part-way"
    stamps = {p.name: p.stat().st_mtime_ns for p in done}

    resumed = run_resumable(slow_predictions, llama, PROMPTS, out, shard_size=4, progress=False, top_k=3)
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps, "finished shards are not recomputed"
    assert not list(out.glob(".shard_*")), "no half-written shard is left"
    fresh = run_resumable(slow_predictions, llama, PROMPTS, tmp_path / "fresh", shard_size=4, progress=False, top_k=3)
    pd.testing.assert_frame_equal(resumed.table, fresh.table, check_exact=True)
    whole = predictions(llama, PROMPTS, top_k=3)  # one process, no shards: the same rows
    pd.testing.assert_frame_equal(resumed.table, whole.table, check_exact=False, atol=1e-6, rtol=0)
    assert resumed.meta["dataset_fingerprint"] == interp.PromptSet(PROMPTS).fingerprint()


STAGE_CHILD = """
import sys, time, json
import interp
from interp.methods import safety_heads
from interp.runs.resumable import run_resumable

real = safety_heads._final_states
def slow(*args, **kwargs):  # a pause per Sahara step, so the parent can kill the run between steps
    out = real(*args, **kwargs)
    time.sleep(1.0)
    return out
safety_heads._final_states = slow

model = interp.load_model(sys.argv[1])
prompts = json.loads(open(sys.argv[2]).read())
run_resumable("sahara", model, prompts, sys.argv[3], progress=False, steps=3)
"""


def test_killed_stage_run_resumes_to_the_uninterrupted_result(llama, tiny_model_dirs, tmp_path):
    """Sahara needs the whole set at every step, so it resumes by step: SIGKILL after its first step is saved,
    rerun, and the table equals an uninterrupted run's (the saved step is not recomputed)."""
    from interp.methods import safety_heads

    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(PROMPTS[:8]))
    script = tmp_path / "child.py"
    script.write_text(STAGE_CHILD)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model_dirs["llama"]), str(prompts_file), str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "stages" / "step_001.parquet"
    deadline = time.time() + 180
    while time.time() < deadline and not first.exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "stages" / "step_003.parquet").exists(), "killed part-way"
    stamp = first.stat().st_mtime_ns

    resumed = run_resumable("sahara", llama, PROMPTS[:8], out, progress=False, steps=3)
    assert first.stat().st_mtime_ns == stamp, "the finished step is not recomputed"
    assert not list((out / "stages").glob(".*tmp*")), "no half-written stage is left"
    whole = safety_heads.sahara(llama, PROMPTS[:8], steps=3)
    pd.testing.assert_frame_equal(resumed.table, whole.table, check_exact=True)
    assert resumed.meta["group"] == whole.meta["group"]


def test_changed_argument_or_model_refuses_to_mix(llama, tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    run_resumable("predictions", llama, PROMPTS[:4], out, shard_size=2, progress=False, top_k=2)
    with pytest.raises(InterpError, match="different parameters"):
        run_resumable("predictions", llama, PROMPTS[:4], out, shard_size=2, progress=False, top_k=3)
    with pytest.raises(InterpError, match="different model"):
        run_resumable("predictions", interp.load_model(tiny_model_dirs["mistral"]), PROMPTS[:4], out, shard_size=2,
                      progress=False, top_k=2)
    with pytest.raises(InterpError, match="different dataset_fingerprint"):
        run_resumable("predictions", llama, PROMPTS[:5], out, shard_size=2, progress=False, top_k=2)


def test_device_map_arguments_reach_the_bridge(tiny_model_dirs, monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    seen = {}
    original = TransformerBridge.boot_transformers

    def spy(name, **kwargs):
        seen.update(kwargs)
        return original(name, **kwargs)

    monkeypatch.setattr(TransformerBridge, "boot_transformers", spy)
    m = interp.load_model(tiny_model_dirs["llama"], device_map={"": "cpu"}, max_memory={"cpu": "2GiB"})
    assert seen["device_map"] == {"": "cpu"} and seen["max_memory"] == {"cpu": "2GiB"} and seen["device"] is None
    assert interp.predictions(m, ["The capital of France is"], top_k=2).table.shape[0] == 2
    with pytest.raises(DeviceError, match="either device= or device_map="):
        interp.load_model(tiny_model_dirs["llama"], device="cpu", device_map="auto")
    with pytest.raises(DeviceError, match="n_devices=2"):
        interp.load_model(tiny_model_dirs["llama"], n_devices=2)

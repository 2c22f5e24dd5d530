"""Run and output directories that would mix, lose or fake data: another run's or a misplaced shard, shards without
a manifest, a second writer, a report directory of the user's, an earlier run's files. Each is refused before any
compute, naming the file or directory."""

import json
import os

import interp
from interp.cli import main
from interp.figures.demo import run_demo
from interp.results.outputs import OutputDirectoryError
from interp.runs.resumable import RunDirectoryError, run_resumable

PROMPTS = [{"id": f"q{i}", "prompt": f"The capital of country number {i} is", "target": " Paris"} for i in range(4)]


def run(m, out, **kw):
    return run_resumable("predictions", m, PROMPTS, out, shard_size=2, progress=False, **kw)


def foreign_shard(m, t):
    run(m, t / "a", top_k=2)
    run(m, t / "b", top_k=3)
    (t / "a" / "shard_00001.parquet").write_bytes((t / "b" / "shard_00001.parquet").read_bytes())
    return run(m, t / "a", top_k=2)


def copied_shard(m, t):
    run(m, t / "a")
    (t / "a" / "shard_00001.parquet").write_bytes((t / "a" / "shard_00000.parquet").read_bytes())
    return run(m, t / "a")


def no_manifest(m, t):
    run(m, t / "a")
    (t / "a" / "manifest.json").unlink()
    return run(m, t / "a", top_k=3)


def held_lock(m, t):
    run(m, t / "a")
    (t / "a" / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "token": "x"}))
    try:
        return run(m, t / "a")
    finally:
        (t / "a" / "run.lock").unlink()


def garbled_manifest(m, t):
    run(m, t / "a")
    (t / "a" / "manifest.json").write_text("{")
    return run(m, t / "a")


def users_directory(t):
    (t / "mine").mkdir()
    (t / "mine" / "thesis.tex").write_text("x")
    return run_demo(t / "mine", data_dir=t / "no_data", quick=True)


def cli_corrupt_weights(t, d):
    import shutil

    shutil.copytree(d["llama"], t / "m")
    (t / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    (t / "p.jsonl").write_text(json.dumps(PROMPTS[0]) + "\n")
    return main(["--debug", "run", "predictions", "--model", str(t / "m"), "--prompts", str(t / "p.jsonl"),
                 "--out", str(t / "o")])


CASES = [
    ("shard of another run", lambda m, t, d: foreign_shard(m, t), RunDirectoryError,
     "shard_00001.parquet' does not belong to this run"),
    ("shard copied over another", lambda m, t, d: copied_shard(m, t), RunDirectoryError,
     "shard_00001.parquet' does not belong to this run .*index"),
    ("shards without a manifest", lambda m, t, d: no_manifest(m, t), RunDirectoryError,
     "holds shards .* but no manifest.json: they are not adopted"),
    ("a second writer", lambda m, t, d: held_lock(m, t), RunDirectoryError, r"Another run \(pid \d+\) is writing"),
    ("garbled manifest", lambda m, t, d: garbled_manifest(m, t), RunDirectoryError, "is not a readable manifest"),
    ("demo into a directory of the user's", lambda m, t, d: users_directory(t), OutputDirectoryError,
     "holds no earlier demo report of interp's; it is left alone"),
    ("demo --out a file", lambda m, t, d: run_demo((t / "f.txt", (t / "f.txt").write_text("x"))[0],
                                                   data_dir=t, quick=True), OutputDirectoryError, "is a file"),
    ("CLI: corrupt weights", lambda m, t, d: cli_corrupt_weights(t, d), interp.ModelLoadError, "Could not load"),
]

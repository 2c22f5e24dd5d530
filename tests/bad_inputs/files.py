"""Files a user hands in or reads back: prompt files written the ways people write them, and result files that were
cut short, edited or mismatched. Each is refused naming the file (and line), never reshaped silently."""

import json

import pandas as pd

import interp
from interp.activations.capture import CaptureFileError
from interp.errors import PromptError
from interp.results.result import ResultFileError


def write(t, name: str, data: bytes | str):
    path = t / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def saved(t, ext: str):
    res = interp.Result(pd.DataFrame({"prompt_id": ["a", "b"], "score": [1.0, 2.0]}), {"method": "x"})
    return getattr(res, f"to_{ext}")(t / f"r.{ext}")


def truncated(path, keep: int):
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


def other_sidecar(t):
    """A CSV with the sidecar of another table next to it (a copy over, or a new CSV under old metadata)."""
    a = saved(t, "csv")
    interp.Result(pd.DataFrame({"prompt_id": ["c"], "score": [3.0]}), {"method": "y"}).to_csv(t / "other.csv")
    (t / "r.csv.meta.json").write_text((t / "other.csv.meta.json").read_text())
    return a


P = "The capital of France is"
CASES = [
    # --- prompt files ---
    ("JSON object of keys", lambda m, t, d: interp.PromptSet(write(t, "p.json", json.dumps({"a": {"prompt": P}}))),
     PromptError, r"list of records or \{\"prompts\""),
    ("JSON scalar", lambda m, t, d: interp.PromptSet(write(t, "p.json", "3")), PromptError, "not a int"),
    ("JSON record not an object", lambda m, t, d: interp.PromptSet(write(t, "p.json", "[[1]]")), PromptError,
     "record 0 is a JSON list"),
    ("JSON invalid", lambda m, t, d: interp.PromptSet(write(t, "p.json", '[{"prompt": "x"},\n')), PromptError,
     "line 2 is not valid JSON"),
    ("JSON duplicate key", lambda m, t, d: interp.PromptSet(write(t, "p.json", '[{"prompt": "x", "prompt": "y"}]')),
     PromptError, "key 'prompt' twice"),
    ("JSONL line not an object", lambda m, t, d: interp.PromptSet(write(t, "p.jsonl", '{"prompt": "x"}\n[1, 2]\n')),
     PromptError, "line 2 is a JSON list"),
    ("JSONL duplicate key", lambda m, t, d: interp.PromptSet(write(t, "p.jsonl", '{"prompt": "x", "id": 1, "id": 2}')),
     PromptError, "line 1 has the key 'id' twice"),
    ("CSV unclosed quote", lambda m, t, d: interp.PromptSet(write(t, "p.csv", f'id,prompt\na,"{P}\nb,x\n')),
     PromptError, "unclosed quote"),
    ("CSV ragged row", lambda m, t, d: interp.PromptSet(write(t, "p.csv", f"id,prompt\na,{P}\nb,x,y\n")),
     PromptError, "line 3 has 3 fields where the header has 2"),
    ("CSV short row", lambda m, t, d: interp.PromptSet(write(t, "p.csv", f"id,prompt,target\na,{P}\n")),
     PromptError, "line 2 has 2 fields where the header has 3"),
    ("CSV duplicated column", lambda m, t, d: interp.PromptSet(write(t, "p.csv", f"prompt,prompt\n{P},x\n")),
     PromptError, "column 'prompt' appears twice"),
    ("Latin-1 file", lambda m, t, d: interp.PromptSet(write(t, "p.csv", "id,prompt\na,caf\xe9\n".encode("latin-1"))),
     PromptError, "line 2 is not UTF-8"),
    ("UTF-16 file", lambda m, t, d: interp.PromptSet(write(t, "p.csv", "id,prompt\na,x\n".encode("utf-16"))),
     PromptError, "UTF-16"),
    ("prompt path is a directory", lambda m, t, d: interp.PromptSet(str(t)), PromptError, "is a directory"),
    ("missing file without a known suffix", lambda m, t, d: interp.PromptSet(str(t / "prompts.txt")), PromptError,
     "no such file"),
    ("unknown prompt-file format", lambda m, t, d: interp.PromptSet(write(t, "p.txt", P)), PromptError,
     "unknown format '.txt'"),
    ("field mixing kinds", lambda m, t, d: interp.PromptSet([{"prompt": P, "label": 1}, {"prompt": P, "label": "x"}]),
     PromptError, "Field 'label' mixes kinds: number in prompt '0', text in prompt '1'"),
    # --- result files ---
    ("truncated CSV", lambda m, t, d: interp.Result.read(truncated(saved(t, "csv"), 20)), ResultFileError,
     "do not belong together"),
    ("CSV under another table's sidecar", lambda m, t, d: interp.Result.read(other_sidecar(t)), ResultFileError,
     "do not belong together"),
    ("CSV without its sidecar", lambda m, t, d: interp.Result.read(write(t, "lone.csv", "a,b\n1,2\n")),
     ResultFileError, "no metadata sidecar"),
    ("truncated Parquet", lambda m, t, d: interp.Result.read(truncated(saved(t, "parquet"), 40)), ResultFileError,
     "not a readable Parquet file"),
    ("truncated JSON", lambda m, t, d: interp.Result.read(truncated(saved(t, "json"), 30)), ResultFileError,
     "not valid JSON"),
    ("unknown result suffix", lambda m, t, d: interp.Result.read(t / "r.xlsx"), ResultFileError,
     "expected a .csv, .parquet or .json"),
    ("table with a column of mixed types", lambda m, t, d: interp.Result(
        pd.DataFrame({"x": [1, "a"]}), {"method": "x"}).to_parquet(t / "mixed.parquet"), ResultFileError,
     "Column 'x' holds values of several kinds"),
]


def capture_index_escaping(t, m):
    out = t / "cap"
    interp.capture(m, [{"prompt": P}], "blocks.0.hook_resid_post", to_dir=out, progress=False)
    index = json.loads((out / "index.json").read_text())
    index["shards"][0]["file"] = "../../etc/passwd"
    (out / "index.json").write_text(json.dumps(index))
    return interp.Capture.open(out)


def capture_index_garbled(t, m):
    out = t / "cap2"
    interp.capture(m, [{"prompt": P}], "blocks.0.hook_resid_post", to_dir=out, progress=False)
    (out / "index.json").write_text('{"names": [')
    return interp.Capture.open(out)


CASES += [
    ("capture index naming a file outside", lambda m, t, d: capture_index_escaping(t, m), CaptureFileError,
     "names the shard '../../etc/passwd', which is not a file inside the capture directory"),
    ("capture index garbled", lambda m, t, d: capture_index_garbled(t, m), CaptureFileError, "is not valid JSON"),
    ("capture directory without index", lambda m, t, d: interp.Capture.open(t), CaptureFileError,
     "holds no capture"),
]

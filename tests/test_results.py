"""Result tables: exact round trips through CSV, Parquet and JSON; views; the registry."""

import math

import numpy as np
import pandas as pd
import pytest

import interp
from interp.methods.registry import get_method, list_methods, require_method


def sample_result() -> interp.Result:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "prompt_id": ["a", "a", "b", "b"],
        "layer": np.array([0, 1, 0, 1], dtype=np.int64),
        "head": np.array([3, 2, 1, 0], dtype=np.int64),
        "token": [" Paris", "x,\"y\"\n", "", " é\r"],
        "score": rng.normal(size=4) * 1e-3 + np.array([1 / 3, math.pi, -0.0, 1e-300]),
        "prob": np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32),
        "chosen": [True, False, True, False],
    })
    meta = interp.make_meta("sample_method", params={"eps": 1e-5, "heads": [(0, 1)]}, extra_note="x")
    meta["schema"] = interp.Schema(
        keys=("prompt_id", "layer", "head"), value="score", unit="logits", sign="higher",
        columns={"prompt_id": "str", "layer": "int", "head": "int", "token": "str", "score": "float", "prob": "float",
                 "chosen": "bool"}).to_dict()
    return interp.Result(table, meta)


@pytest.mark.parametrize("ext", ["csv", "parquet", "json"])
def test_round_trip_is_exact(tmp_path, ext):
    res = sample_result()
    path = getattr(res, f"to_{ext}")(tmp_path / f"r.{ext}")
    back = interp.Result.read(path)
    pd.testing.assert_frame_equal(back.table, res.table, check_exact=True)
    assert back.meta == res.meta
    assert back.meta["parameters"]["heads"] == [[0, 1]]


def test_meta_records_what_was_run(tiny_model_dirs):
    m = interp.load_model(tiny_model_dirs["llama"])
    ps = interp.PromptSet(["The capital of France is"])
    res = interp.predictions(m, ps, top_k=2)
    for key in ("model", "method", "parameters", "dataset_fingerprint", "package_version", "time"):
        assert key in res.meta
    assert res.meta["parameters"] == {"top_k": 2, "target": "target", "batch_size": 16, "progress": False}
    assert res.meta["model_path"] == str(tiny_model_dirs["llama"].resolve())
    assert res.meta["dtype"] == "float32" and res.meta["device"] == "cpu"
    assert res.meta["transformer_lens_version"].startswith("4.") and res.meta["torch_version"] != "unknown"
    assert len(res.meta["weights_fingerprint"]) == 16
    assert res.meta["dataset_fingerprint"] == ps.fingerprint() != interp.PromptSet(["other"]).fingerprint()


def test_top_and_pivot():
    res = sample_result()
    assert res.top(1)["score"].iloc[0] == res.table["score"].max()  # the schema's value column and sign
    assert res.pivot().equals(res.pivot("layer", "head", "score"))  # the schema's grid
    grid = res.pivot("layer", "head", "score")
    assert grid.loc[1, 3 - 1] == res.table.query("layer == 1 and head == 2")["score"].iloc[0]


def test_figure_is_plotly():
    fig = sample_result().figure()
    assert fig.to_dict()["data"][0]["type"] == "bar"


def test_registry_lists_and_accepts_a_users_method():
    assert get_method("predictions").cost.startswith("1 forward")

    schema = interp.Schema(keys=(), value="score", unit="prompts", sign="higher", columns={"score": "int"})

    @interp.register_method("my_count_method", paper="none", cost="0 forwards", replace=True, schema=schema)
    def my_count_method(model, prompts, *, factor: int = 2) -> interp.Result:
        """Counts prompts times a factor."""
        return interp.Result(pd.DataFrame({"score": [len(prompts) * factor]}), interp.make_meta())

    entry = require_method("my_count_method")
    assert entry.parameters == {"factor": 2} and entry.summary == "Counts prompts times a factor."
    assert "my_count_method" in [e.name for e in list_methods()]
    with pytest.raises(interp.ParameterError, match="already registered"):
        interp.register_method("my_count_method", paper="", cost="", schema=schema)(lambda m, p: None)
    with pytest.raises(TypeError, match="schema"):  # the contract is declared, not remembered
        interp.register_method("no_schema_method", paper="", cost="")(lambda m, p: None)
    res = my_count_method(None, ["a", "b"], factor=3)
    assert res.table["score"].tolist() == [6] and res.meta["parameters"] == {"factor": 3}
    with pytest.raises(interp.ParameterError, match="undeclared"):  # the table is checked against the schema
        interp.register_method("bad_table_method", paper="", cost="", schema=schema)(
            lambda m, p: interp.Result(pd.DataFrame({"score": [1], "extra": [2]}), {}))(None, ["a"])
    interp.methods.registry._REGISTRY.pop("bad_table_method", None)


def test_csv_is_safe_to_open_and_still_exact(tmp_path):
    """Cells a spreadsheet would run as formulas are written with a leading quote; "<NA>" text stays text."""
    texts = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tTAB", "'quoted", "<NA>", "plain", None]
    res = interp.Result(pd.DataFrame({"token": texts, "score": np.arange(len(texts), dtype=float)}),
                        {"method": "x"})
    path = res.to_csv(tmp_path / "r.csv")
    raw = path.read_text()
    for dangerous in ("\r\n=HYP", "\r\n+1", "\r\n-2", "\r\n@SUM"):
        assert dangerous not in raw
    back = interp.Result.read(path)
    pd.testing.assert_frame_equal(back.table, res.table, check_exact=True)
    assert back.table["token"].tolist()[6] == "<NA>" and back.table["token"].isna().tolist()[8]


def test_prompt_files_with_a_byte_order_mark_keep_their_ids(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid,prompt,target\nparis,The capital of France is, Paris\n".encode("utf-8"))
    ps = interp.PromptSet(path)
    assert ps.ids == ["paris"] and ps[0]["target"] == " Paris"
    json_file = tmp_path / "p.json"
    json_file.write_text('{"prompts": [{"id": "a", "prompt": "x"}, "y"]}')
    assert interp.PromptSet(json_file).prompts == ["x", "y"]

"""The command line: list, run (table + figure written), options built from the registry, --import and the
entry-point group for a user's methods, global flags anywhere, one-line errors with a non-zero exit."""

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

import interp
from interp.cli import main
from interp.methods import registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "The capital of France is", "target": " Paris"}) + "\n")
    return path


def test_list_shows_methods_with_paper_and_cost(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "predictions(top_k=5, target='target', batch_size=16, progress=False)" in out and "cost: 1 forward" in out


def test_run_writes_table_meta_and_figure(tiny_model_dirs, tmp_path, prompt_file):
    code = main(["run", "predictions", "--model", str(tiny_model_dirs["llama"]), "--prompts", str(prompt_file),
                 "--set", "top_k=3", "--out", str(tmp_path / "out")])
    assert code == 0
    res = interp.Result.read(tmp_path / "out" / "predictions.parquet")
    assert len(res.table) == 3 and res.meta["parameters"]["top_k"] == 3
    html = (tmp_path / "out" / "predictions.html").read_text()
    assert "plotly" in html and "cdn.plot.ly" not in html.split("<body>")[0]


def test_method_options_come_from_the_registry(tiny_model_dirs, tmp_path, prompt_file, capsys):
    assert main(["run", "predictions", "--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"--top-k VALUE.*\n\s*int; default: 5", out) and "--batch-size" in out
    assert main(["run", "generalized_ships", "--help"]) == 0
    assert re.search(r"--heads VALUE\s+.*REQUIRED", capsys.readouterr().out)
    # an option of the method's own, with global flags after and before the command
    code = main(["--device", "cpu", "run", "predictions", "--model", str(tiny_model_dirs["llama"]), "--prompts",
                 str(prompt_file), "--top-k", "2", "--out", str(tmp_path / "o"), "--dtype", "float64"])
    assert code == 0
    res = interp.Result.read(tmp_path / "o" / "predictions.json")
    assert len(res.table) == 2 and res.meta["dtype"] == "float64" and res.meta["device"] == "cpu"


def one_line_error(capsys, argv, pattern, code=2):
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    assert err.startswith("interp: error:") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    return err


def test_errors_are_one_line(tmp_path, capsys, tiny_model_dirs, prompt_file):
    one_line_error(capsys, ["run", "predictions", "--model", str(tmp_path / "nope"), "--prompts", str(prompt_file),
                            "--out", str(tmp_path / "o")], "does not exist")
    one_line_error(capsys, ["run", "prediction", "--model", "m", "--prompts", "p", "--out", "o"],
                   "Did you mean predictions")
    one_line_error(capsys, ["run", "generalized_ships", "--model", str(tiny_model_dirs["llama"]), "--prompts",
                            str(prompt_file), "--out", str(tmp_path / "g")], "missing required parameter --heads")
    one_line_error(capsys, ["run", "predictions", "--model", "m", "--prompts", "p"], "required: --out")
    one_line_error(capsys, ["run", "predictions", "--model", "m", "--prompts", "p", "--out", "o", "--frobnicate", "1"],
                   "unrecognized arguments: --frobnicate")
    one_line_error(capsys, ["--import", "no_such_module_here", "list"], "cannot import")
    one_line_error(capsys, ["frobnicate"], "invalid choice")
    assert not (tmp_path / "g").exists()  # refused before anything was written


def test_import_makes_a_users_method_runnable(tmp_path, tiny_model_dirs, prompt_file, monkeypatch):
    module = tmp_path / "cli_user_probe.py"
    module.write_text(textwrap.dedent('''
        import pandas as pd
        import interp

        @interp.register_method("cli_user_probe", paper="none", cost="0 forwards", replace=True,
                                schema=interp.Schema(keys=("prompt_id",), value="score", unit="characters",
                                                     sign="higher", columns={"prompt_id": "str", "score": "int"}))
        def cli_user_probe(model, prompts, *, factor: int = 2):
            """The prompt's length times a factor."""
            ps = interp.PromptSet(prompts)
            return interp.Result(pd.DataFrame({"prompt_id": ps.ids, "score": [len(p) * factor for p in ps.prompts]}),
                                 interp.make_meta(model=model, prompts=ps))
    '''))
    out = tmp_path / "o"
    assert main(["run", "cli_user_probe", "--model", str(tiny_model_dirs["llama"]), "--prompts", str(prompt_file),
                 "--factor", "3", "--out", str(out), "--import", str(module)]) == 0
    res = interp.Result.read(out / "cli_user_probe.csv")
    assert res.table["score"].tolist() == [3 * len("The capital of France is")]
    assert res.meta["parameters"] == {"factor": 3} and res.meta["schema"]["unit"] == "characters"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["--import", "cli_user_probe", "list"]) == 0
    finally:
        registry._REGISTRY.pop("cli_user_probe", None)  # leave the registry as it was for later tests
        sys.modules.pop("cli_user_probe", None)


def test_entry_point_group_registers_methods(tmp_path, monkeypatch):
    dist = tmp_path / "interp_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: interp-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[interp.methods]\nplugin = interp_plugin_probe\n")
    (tmp_path / "interp_plugin_probe.py").write_text(textwrap.dedent('''
        import interp

        @interp.register_method("plugin_probe", paper="none", cost="0 forwards", replace=True,
                                schema=interp.Schema(keys=("prompt_id",), value="score", unit="count", sign="higher",
                                                     columns={"prompt_id": "str", "score": "int"}))
        def plugin_probe(model, prompts):
            """Nothing at all."""
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    try:
        assert registry.get_method("plugin_probe") is not None
        assert "plugin_probe" in [e.name for e in registry.list_methods()]
    finally:
        registry._REGISTRY.pop("plugin_probe", None)
        sys.modules.pop("interp_plugin_probe", None)

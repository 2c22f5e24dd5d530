"""The command line: list, run (table + figure written), one-line errors with a non-zero exit."""

import json

import interp
from interp.cli import main


def test_list_shows_methods_with_paper_and_cost(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "predictions(top_k=5, batch_size=16)" in out and "cost: 1 forward" in out


def test_run_writes_table_meta_and_figure(tiny_model_dirs, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "The capital of France is", "target": " Paris"}) + "\n")
    code = main(["run", "predictions", "--model", str(tiny_model_dirs["llama"]), "--prompts", str(prompts),
                 "--set", "top_k=3", "--out", str(tmp_path / "out")])
    assert code == 0
    res = interp.Result.read(tmp_path / "out" / "predictions.parquet")
    assert len(res.table) == 3 and res.meta["parameters"]["top_k"] == 3
    html = (tmp_path / "out" / "predictions.html").read_text()
    assert "plotly" in html and "cdn.plot.ly" not in html.split("<body>")[0]


def test_errors_are_one_line(tmp_path, capsys):
    code = main(["run", "predictions", "--model", str(tmp_path / "nope"), "--prompts", "x.jsonl", "--out", "o"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("interp: error:") and err.count("\n") == 1 and "does not exist" in err
    code = main(["run", "prediction", "--model", "m", "--prompts", "p", "--out", "o"])
    assert code == 2 and "Did you mean predictions" in capsys.readouterr().err

"""Output directories never lose a user's files: the demo refuses a directory that is not an earlier report of its
own, replaces an earlier one only with overwrite (and then only the files it wrote), and `interp run --out`
refuses to replace an earlier run's files without --overwrite. Refusals come before any compute."""

import json

import pytest

from interp.cli import main
from interp.figures.demo import run_demo
from interp.results.outputs import MARKER, OutputDirectoryError


@pytest.fixture()
def no_organisms(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    return empty  # the demo then shows the core on a tiny random model: fast


def test_demo_refuses_a_directory_of_the_users(tmp_path, no_organisms):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputDirectoryError, match="holds no earlier demo report"):
        run_demo(mine, data_dir=no_organisms, quick=True)
    with pytest.raises(OutputDirectoryError, match="holds no earlier demo report"):
        run_demo(mine, data_dir=no_organisms, quick=True, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_demo_replaces_its_own_report_only_when_asked_and_only_its_files(tmp_path, no_organisms):
    out = tmp_path / "report"
    index = run_demo(out, data_dir=no_organisms, quick=True)
    assert index.exists() and (out / MARKER).exists()
    listed = set(json.loads((out / MARKER).read_text())["files"])
    assert "index.html" in listed and any(f.startswith("tables/") for f in listed)
    with pytest.raises(OutputDirectoryError, match="pass --overwrite"):
        run_demo(out, data_dir=no_organisms, quick=True)
    (out / "my_notes.md").write_text("mine")
    (out / "tables" / "my_table.csv").write_text("a\n1\n")
    run_demo(out, data_dir=no_organisms, quick=True, overwrite=True)
    assert (out / "my_notes.md").read_text() == "mine" and (out / "tables" / "my_table.csv").exists()
    assert (out / "index.html").exists()
    assert not list(tmp_path.glob(".report.building-*"))  # no temporary directory left behind


def test_demo_dot_is_refused_before_anything_runs(tmp_path, no_organisms, monkeypatch, capsys):
    (tmp_path / "precious.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", ".", "--data", str(no_organisms), "--quick"]) == 2
    assert "holds no earlier demo report" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "x"


def test_run_out_is_not_replaced_without_overwrite(tmp_path, tiny_model_dirs, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "The capital of France is", "target": " Paris"}) + "\n")
    argv = ["run", "predictions", "--model", str(tiny_model_dirs["llama"]), "--prompts", str(prompts),
            "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    before = (tmp_path / "o" / "predictions.csv").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--top-k", "2"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "o" / "predictions.csv").read_bytes() == before
    assert main([*argv, "--top-k", "2", "--overwrite"]) == 0
    assert (tmp_path / "o" / "predictions.csv").read_bytes() != before

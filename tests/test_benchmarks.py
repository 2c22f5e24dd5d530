"""The benchmark machinery (never a timing): the harness interleaves the sides with a rotating order, computes the
ratios it prints and writes its rows atomically; the README quotes exactly the table `make bench` wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402
import run_all  # noqa: E402


def _between(text: str, begin: str, end: str) -> list[str]:
    assert text.count(begin) == 1 and text.count(end) == 1, f"expected one {begin} ... {end} block"
    return [line.rstrip() for line in text.split(begin)[1].split(end)[0].strip().splitlines()]


def test_readme_quotes_exactly_the_table_make_bench_wrote():
    written = _between((ROOT / "benchmarks" / "results.md").read_text(), run_all.BEGIN, run_all.END)
    quoted = _between((ROOT / "README.md").read_text(), run_all.BEGIN, run_all.END)
    assert quoted == written, "README's benchmark table differs from benchmarks/results.md: rerun `make bench` " \
                              "(it copies its table into the README)"
    saved = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    assert written[0] == f"Written by `{saved['command']}` ({len(saved['rows'])} cases):"  # the command is named
    lines = [line for line in written if line.startswith("|")]
    assert lines == harness.table([harness.Row.from_dict(r) for r in saved["rows"]]).strip().splitlines()


def test_sides_interleave_with_a_rotating_order_and_the_ratios_follow():
    calls = []

    def side(name, value):
        return lambda: calls.append(name) or value

    case = harness.Case("toy", side("interp", 1.0), side("naive", 1.5), side("equal_work", 1.0), side("floor", 0),
                        floor_forwards=2, check=lambda a, b: abs(a - b))
    row = harness.measure(case, "bench_toy", repeats=4, warmup=2)
    warm, timed = calls[:8], calls[8:]
    assert warm == ["interp", "interp", "naive", "naive", "equal_work", "equal_work", "floor", "floor"]
    rounds = [timed[i:i + 4] for i in range(0, 16, 4)]
    assert rounds == [["interp", "naive", "equal_work", "floor"], ["naive", "equal_work", "floor", "interp"],
                      ["equal_work", "floor", "interp", "naive"], ["floor", "interp", "naive", "equal_work"]]
    assert row.max_abs_diff == 0.5 and row.repeats == 4
    assert row.vs_floor == pytest.approx(row.interp_s / (2 * row.floor_s))
    assert row.vs_naive == pytest.approx(row.interp_s / row.naive_s)
    assert row.vs_equal_work == pytest.approx(row.interp_s / row.equal_work_s)


def test_a_missing_side_is_shown_as_a_dash_and_bad_cases_are_refused(tmp_path):
    case = harness.Case("no baselines", lambda: 0, None, None, lambda: 0, floor_forwards=1)
    row = harness.measure(case, "bench_toy", repeats=1)
    assert row.vs_naive is None and row.max_abs_diff is None
    line = harness.table([row]).splitlines()[2]
    assert line.split("|")[8].strip() == "-" and line.split("|")[10].strip() == "-"
    with pytest.raises(ValueError, match="floor_forwards"):
        harness.Case("x", lambda: 0, None, None, lambda: 0, floor_forwards=0)
    with pytest.raises(TypeError, match="callables"):
        harness.Case("x", None, None, None, lambda: 0, floor_forwards=1)  # type: ignore[arg-type]


def test_rows_round_trip_through_the_results_file(tmp_path):
    row = harness.Row("bench_toy", "c", 2.0, 4.0, None, 0.5, 2.0, 3, 1e-7, "a note")
    path = harness.write_results(tmp_path / "rows.json", [row])
    assert harness.read_results(path) == [row]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    md = harness.write_results(tmp_path / "rows.md", [row]).read_text()
    assert "| 2.00x | 0.50x | - |" in md  # interp/floor = 2 / (2 x 0.5), interp/naive = 2 / 4


def test_main_runs_the_cases_of_a_file_and_writes_its_rows(tmp_path, capsys):
    def cases(quick=False):
        return [harness.Case("a", lambda: 1, lambda: 1, None, lambda: 1, 1, check=lambda x, y: x - y),
                harness.Case("b", lambda: 2, None, None, lambda: 1, 3)]

    rows = harness.main(cases, ["--quick", "--repeats", "1", "--only", "a", "--results", str(tmp_path / "r.json")])
    assert [r.case for r in rows] == ["a"] and rows[0].max_abs_diff == 0
    assert "| a |" in capsys.readouterr().out
    assert [r.case for r in harness.read_results(tmp_path / "r.json")] == ["a"]
    with pytest.raises(ValueError, match="no case named"):
        harness.main(cases, ["--only", "c", "--results", str(tmp_path / "x.json")])


def test_every_harnessed_benchmark_file_defines_cases_and_calls_main():
    harnessed, _ = run_all.bench_files()
    assert harnessed, "no benchmark file is written to the harness"
    for f in harnessed:
        text = f.read_text()
        assert "def cases(quick: bool = False)" in text and "main(cases)" in text, f.name


def _suite_rows(argv):
    import gpu_suite

    rows = gpu_suite.main(argv)
    assert rows, "the suite ran nothing"
    for r in rows:
        assert not r["error"], f"{r['method']} failed in the suite: {r['error']}"
        assert r["max_abs_diff_vs_cpu_fp32"] <= 1e-4, r  # the same call on the same device and dtype agrees
        assert r["seconds"] > 0 and r["x_forward"] > 0
    return rows


@pytest.mark.slow  # > 30 s on the shared 2-core machine (155 s measured while it was loaded)
def test_the_gpu_suite_runs_on_cpu_in_its_tiny_mode(tmp_path):
    rows = _suite_rows(["--device", "cpu", "--tiny", "--dtypes", "float32", "--only", "logit_lens", "ships",
                        "expert_attribution", "--out", str(tmp_path / "gpu.md")])
    assert {(r["method"], r["model"]) for r in rows} == {("logit_lens", "llama"), ("ships", "llama"),
                                                         ("expert_attribution", "moe")}
    assert (tmp_path / "gpu.md").read_text().count("\n") == 2 + len(rows)


@pytest.mark.slow
def test_the_gpu_suite_runs_every_method_on_cpu_in_its_tiny_mode():
    _suite_rows(["--device", "cpu", "--tiny", "--dtypes", "float32"])

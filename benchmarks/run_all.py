"""Run every benchmark file's cases and write the one table, ``benchmarks/results.md`` (what ``make bench`` does).

Each ``benchmarks/bench_*.py`` that defines ``cases(quick)`` (the harness's API, see harness.py) runs in its own
process (so one file's models and threads do not weigh on the next), with ``--quick`` unless ``--full`` is given;
its rows come back through a JSON file and all rows go into one Markdown table, written atomically. A file that
fails is named in the table's notes and the exit status is 1 (the other files' rows are still written). Files
without ``cases`` are listed as not run.

The README's table (between the markers) is replaced by the new one when the default --out is written.

Run: .venv/bin/python benchmarks/run_all.py [--full] [--only bench_lens ...] [--out benchmarks/results.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import environment, read_results, table, write_results  # noqa: E402

BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"


def bench_files(only: list[str] | None = None) -> tuple[list[Path], list[Path]]:
    """(files written to the harness, the other bench_*.py files), sorted by name."""
    files = sorted(HERE.glob("bench_*.py"))
    if only:
        unknown = sorted(set(only) - {f.stem for f in files})
        if unknown:
            raise SystemExit(f"no benchmark file {unknown}; the files are {[f.stem for f in files]}")
        files = [f for f in files if f.stem in only]
    harnessed = [f for f in files if "\ndef cases(" in f.read_text()]
    return harnessed, [f for f in files if f not in harnessed]


def render(rows: list, command: str, failed: list[str], skipped: list[str]) -> str:
    """The results page: how it was made, the table between markers (the README quotes exactly those lines)."""
    env = environment()
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}` (benchmarks/run_all.py); do not edit by hand: rerun it. Each ratio is the median "
        "time of interp over the median time of the other side (below 1 = interp is faster; interp/floor is "
        "interp over floor_forwards plain batched forwards, >= 1 unless interp does less than the floor).",
        "",
        f"Machine: {env.get('cpus')} CPUs, torch {env.get('torch')} ({env.get('torch_threads')} threads), "
        f"CUDA device: {env.get('cuda') or 'none'}.",
        "",
        BEGIN,
        f"Written by `{command}` ({len(rows)} cases):",
        "",
        table(rows).rstrip("\n"),
        END,
        "",
    ]
    from goals import lines as goal_lines

    lines += ["Goals of issue #19 (benchmarks/goals.py; computed from the ratios above):", "", *goal_lines(rows), ""]
    notes = [f.strip() for f in {r.note for r in rows} if f and f.strip()]
    if notes:
        lines += ["Notes of the cases:", ""] + [f"- {n}" for n in sorted(notes)] + [""]
    if failed:
        lines += [f"FAILED (no rows): {', '.join(failed)}", ""]
    if skipped:
        lines += [f"Not run (no `cases()` for the harness): {', '.join(skipped)}", ""]
    return "\n".join(lines)


def sync_readme(results: Path = HERE / "results.md", readme: Path = HERE.parent / "README.md") -> bool:
    """Copy the table of ``results`` into the README between the same markers (atomically); True if it changed."""
    from interp.results.atomic import write_text

    block = results.read_text().split(BEGIN)[1].split(END)[0]
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{readme} needs one {BEGIN} ... {END} block for the benchmark table")
    head, rest = text.split(BEGIN)
    new = head + BEGIN + block + END + rest.split(END)[1]
    if new != text:
        write_text(readme, new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the full sizes (default: --quick)")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark files by stem, e.g. bench_lens")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results.md"))
    args = ap.parse_args(argv)
    harnessed, other = bench_files(args.only)
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for f in harnessed:
            out = Path(tmp) / f"{f.stem}.json"
            cmd = [sys.executable, str(f), "--results", str(out)] + ([] if args.full else ["--quick"])
            if args.repeats is not None:
                cmd += ["--repeats", str(args.repeats)]
            t = time.perf_counter()
            print(f"== {f.name}", flush=True)
            res = subprocess.run(cmd, cwd=HERE.parent)
            if res.returncode != 0 or not out.exists():
                print(f"== {f.name} FAILED (exit {res.returncode})", flush=True)
                failed.append(f.stem)
                continue
            rows += read_results(out)
            print(f"== {f.name}: {time.perf_counter() - t:.0f} s", flush=True)
    command = "make bench" if not args.full and not args.only and args.repeats is None else \
        "python benchmarks/run_all.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    text = render(rows, command.strip(), failed, [f.stem for f in other])
    from interp.results.atomic import write_text

    write_text(args.out, text)
    write_results(Path(args.out).with_suffix(".json"), rows, extra={"command": command.strip()})
    if Path(args.out).resolve() == (HERE / "results.md").resolve():
        sync_readme()  # the README quotes exactly this table (tests/test_benchmarks.py checks it)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark harness every ``benchmarks/bench_*.py`` runs on. Benchmarks measure; they are never tests.

A benchmark file defines ``cases(quick: bool = False) -> list[Case]`` and ends with
``if __name__ == "__main__": main(cases)``. Each :class:`Case` names four ways of doing one job:

- ``interp``: the interp call being measured;
- ``naive``: the loop as a researcher writes it (plain Hugging Face / bridge hooks, one thing at a time);
- ``equal_work``: the same loop doing only the work interp must do (skip-aware, prompt-batched): the fair
  baseline, so ``interp / equal_work`` says what interp's engine itself costs or saves;
- ``floor``: one plain batched forward of the same batch, no hooks; ``floor_forwards`` is how many such
  forward-equivalents the job needs at minimum, so the floor time is ``floor_forwards x floor``.

The harness warms every side up (their first outputs feed ``check``), then times ``repeats`` rounds; in each
round every side runs once, in an order that rotates from round to round (so a slow spell of a shared machine
or a cache warmed by the previous side falls on every side alike), and reports the median per side. Printed and
written: seconds per side, the three ratios ``interp/naive``, ``interp/equal_work``,
``interp/(floor_forwards x floor)`` (below 1 is faster than the baseline; the last is >= 1 unless interp beats
the floor's forward count), and ``check(interp_out, naive_out)``, the largest absolute difference between them.

Run one file: ``python benchmarks/bench_x.py [--quick] [--repeats N] [--warmup N] [--only NAME] [--results PATH]``.
Rows go to ``--results`` (default ``results/bench/<file>.json``, top-level results/ is not tracked), atomically;
``benchmarks/run_all.py`` (``make bench``) runs every file and writes the one table, ``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("interp", "naive", "equal_work", "floor")


@dataclasses.dataclass
class Case:
    """One benchmarked job, four ways (see the module docstring). A side may be ``None`` where it does not
    apply (its time and ratio are then shown as '-'); ``interp`` and ``floor`` are always required."""

    name: str
    interp: Callable[[], Any]
    naive: Callable[[], Any] | None
    equal_work: Callable[[], Any] | None
    floor: Callable[[], Any]
    floor_forwards: float
    check: Callable[[Any, Any], float] | None = None
    note: str = ""
    extra: dict[str, float] = dataclasses.field(default_factory=dict)  # other measured numbers (goals read them)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("Case.name must be a non-empty string")
        if not callable(self.interp) or not callable(self.floor):
            raise TypeError(f"case {self.name!r}: interp and floor must be callables")
        if not (isinstance(self.floor_forwards, int | float) and self.floor_forwards > 0):
            raise ValueError(f"case {self.name!r}: floor_forwards must be a positive number, "
                             f"got {self.floor_forwards!r}")


@dataclasses.dataclass
class Row:
    """One case's measurement (what the table and the results file hold)."""

    bench: str
    case: str
    interp_s: float
    naive_s: float | None
    equal_work_s: float | None
    floor_s: float
    floor_forwards: float
    repeats: int
    max_abs_diff: float | None
    note: str = ""
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def vs_naive(self) -> float | None:
        return None if self.naive_s is None else self.interp_s / self.naive_s

    @property
    def vs_equal_work(self) -> float | None:
        return None if self.equal_work_s is None else self.interp_s / self.equal_work_s

    @property
    def vs_floor(self) -> float:
        return self.interp_s / (self.floor_forwards * self.floor_s)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(vs_naive=self.vs_naive, vs_equal_work=self.vs_equal_work, vs_floor=self.vs_floor)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _sync() -> None:
    """Wait for queued GPU work so a side's time includes it (a no-op when CUDA was never used)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def measure(case: Case, bench: str = "", repeats: int = 5, warmup: int = 1) -> Row:
    """Warm every side up ``warmup`` times (at least once: the first outputs of interp and naive feed the check),
    then time ``repeats`` rounds with the order of the sides rotated each round; the median per side."""
    sides = {s: getattr(case, s) for s in SIDES if getattr(case, s) is not None}
    first = {}
    for s, fn in sides.items():
        first[s] = fn()
        _sync()
        for _ in range(max(0, warmup - 1)):
            fn()
            _sync()
    diff = None
    if case.check is not None and "naive" in first:
        diff = float(case.check(first["interp"], first["naive"]))
    del first
    gc.collect()
    order = list(sides)
    times: dict[str, list[float]] = {s: [] for s in order}
    for r in range(max(1, repeats)):
        k = r % len(order)
        for s in order[k:] + order[:k]:
            times[s].append(_timed(sides[s]))
    med = {s: statistics.median(v) for s, v in times.items()}
    return Row(bench=bench, case=case.name, interp_s=med["interp"], naive_s=med.get("naive"),
               equal_work_s=med.get("equal_work"), floor_s=med["floor"], floor_forwards=float(case.floor_forwards),
               repeats=max(1, repeats), max_abs_diff=diff, note=case.note,
               extra=dict(case.extra))


def _num(x: float | None, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


HEADER = ("bench", "case", "interp", "naive", "equal work", "floor x n", "interp/floor", "interp/naive",
          "interp/equal work", "max abs diff")


def table(rows: Sequence[Row]) -> str:
    """A Markdown table of the rows: seconds per side (the floor column is one floor forward and its count n), the
    three ratios with the floor ratio first (the headline), and the check's difference."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for r in rows:
        n = f"{r.floor_forwards:g}"
        cells = (r.bench, r.case, _secs(r.interp_s), _secs(r.naive_s), _secs(r.equal_work_s),
                 f"{_secs(r.floor_s)} x {n}", _ratio(r.vs_floor), _ratio(r.vs_naive), _ratio(r.vs_equal_work),
                 _num(r.max_abs_diff, ".1e"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    """What the numbers were measured on (written next to the rows)."""
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except ImportError:  # pragma: no cover
        pass
    return info


def write_results(path: str | Path, rows: Sequence[Row], extra: dict | None = None) -> Path:
    """Write the rows (and the environment) to ``path`` atomically: ``.json`` holds the rows as records, any
    other suffix the Markdown table."""
    path = Path(path)
    if path.suffix == ".json":
        text = json.dumps({"environment": environment(), **(extra or {}), "rows": [r.as_dict() for r in rows]},
                          indent=1)
    else:
        text = table(rows)
    from interp.results.atomic import write_text

    write_text(path, text)
    return path


def read_results(path: str | Path) -> list[Row]:
    """The rows of a ``.json`` results file written by :func:`write_results`."""
    return [Row.from_dict(d) for d in json.loads(Path(path).read_text())["rows"]]


def main(cases: Callable[..., list[Case]], argv: Sequence[str] | None = None) -> list[Row]:
    """Command line of one benchmark file: build its cases, measure each, print the table, write the rows."""
    module = sys.modules.get(cases.__module__)
    bench = Path(getattr(module, "__file__", None) or "bench").stem
    ap = argparse.ArgumentParser(description=(getattr(module, "__doc__", None) or "").strip().split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small sizes (what `make bench` runs)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 3 quick, 7 full)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each side first (at least 1)")
    ap.add_argument("--only", action="append", default=None, help="run only the named case (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--results", default=None, help="rows to this file (.json records, else Markdown); "
                    "default results/bench/<file>.json")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    built = cases(quick=args.quick)
    names = [c.name for c in built]
    if len(set(names)) != len(names):
        raise ValueError(f"{bench}: case names repeat: {names}")
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise ValueError(f"{bench}: no case named {unknown}; the cases are {names}")
        built = [c for c in built if c.name in args.only]
    rows = []
    for case in built:
        t = time.perf_counter()
        rows.append(measure(case, bench, repeats=repeats, warmup=args.warmup))
        print(f"[{bench}] {case.name}: measured in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    print(table(rows), end="")
    out = Path(args.results) if args.results else ROOT / "results" / "bench" / f"{bench}.json"
    write_results(out, rows, extra={"bench": bench, "quick": args.quick})
    print(f"rows written to {out}")
    return rows
